"""A FHIR router with no web framework inside (Medplum's habit): handlers are (FhirRequest, Services) ->
FhirResponse, and the whole route table is in routes.py. Bundle entries are dispatched through the same
router as HTTP requests, so batch and transaction behave exactly like the interactions they contain.

`dispatch` is also where every request meets the disclosure gate (app.fhir.gate): the handler's response is
released through it, so no route, present or future, can return data the gate has not judged; and it writes the
request's one access record (the handler's, completed by the gate with what actually left), or the refusal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from app.core.access import AccessRecord, Principal
from app.core.errors import FhirError
from app.fhir.http import FhirResponse
from app.services import Services
from app.store.repository import WriteContext


@dataclass
class FhirRequest:
    method: str
    path: str  # relative to the FHIR base, no leading slash: "Patient/123/_history/2"
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: dict[str, Any] | None = None
    raw_body: bytes | None = None
    content_type: str | None = None
    base: str = ""
    principal: Principal | None = None
    write: WriteContext = field(default_factory=WriteContext)
    remote_addr: str | None = None
    in_transaction: bool = False
    gate: Any = None  # the request's DisclosureGate (set by Router.dispatch)
    access: AccessRecord | None = None  # what the handler says the request did, for the audit trail
    instance: dict[str, Any] | None = None  # an instance operation's stored document, read once for the gate
    public: bool = False  # a request of PUBLIC: answered without a token, its answer not judged by the gate

    def audit(self, record: AccessRecord) -> None:
        """Say what this request did; the router completes it with what was disclosed and records it."""
        self.access = record

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None

    def query_string(self) -> str:
        return urlencode(self.params)


Handler = Callable[..., FhirResponse]

# The requests answered to anyone, without a token: the server's own conformance resources, which say what it
# is and what it offers (HAPI and most servers make them public): the CapabilityStatement, the SMART and OpenID
# discovery documents (served by app.auth.smart when auth is on) and the OperationDefinitions the
# CapabilityStatement names (app.fhir.conformance). The one list: the web edge does not authenticate these
# requests (app.fhir.fhir_entry), the disclosure gate does not judge their answers (the server's, not records),
# and the audit trail does not record them (app.audit.plugin: anyone could fill it with them).
# Reads only: any other method on these paths needs a token like every request.
PUBLIC: tuple[tuple[str, ...], ...] = (
    ("metadata",),
    (".well-known", "smart-configuration"),
    (".well-known", "openid-configuration"),
    ("OperationDefinition",),
    ("OperationDefinition", "{id}"),
)


def is_public(method: str, path: str) -> bool:
    """Whether a request is one of PUBLIC (a GET, or a HEAD: its headers)."""
    segments = _segments(path)
    return method in ("GET", "HEAD") and any(_match(pattern, segments) is not None for pattern in PUBLIC)


@dataclass
class Route:
    method: str
    pattern: tuple[str, ...]  # literal segments, "{type}", "{id}", "{vid}", "{op}"
    handler: Handler
    interaction: str | None = None  # what the resource type must offer (resource-types.json), for Allow


# The order methods are listed in an Allow header.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allow_header(methods: set[str]) -> str:
    """An Allow header (RFC 9110 §10.2.1): HEAD goes wherever GET does (the web edge answers it as GET)."""
    if "GET" in methods:
        methods = methods | {"HEAD"}
    return ", ".join(m for m in _METHODS if m in methods)


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        segments = _segments(path)
        path_matched = False
        for route in self.routes:
            args = _match(route.pattern, segments)
            if args is None:
                continue
            path_matched = True
            if route.method == method:
                return route.handler, args
        if path_matched:
            raise FhirError(405, f"{method} is not allowed on /{path}", code="not-supported")
        raise FhirError(404, f"no FHIR interaction at /{path}", code="not-found")

    def allowed(self, path: str, offers: Callable[[str, str], bool]) -> set[str]:
        """The methods some route answers at this path, less those whose interaction the resource type does not
        offer (`offers(type, interaction)`: AuditEvent is read and search only)."""
        methods: set[str] = set()
        segments = _segments(path)
        for route in self.routes:
            args = _match(route.pattern, segments)
            if args is None or (route.interaction and "type" in args and not offers(args["type"], route.interaction)):
                continue
            methods.add(route.method)
        return methods

    def _explain_405(self, err: FhirError, path: str, services: Services) -> None:
        """A 405 must say what is allowed (RFC 9110 §15.5.6), whichever layer refused the method."""
        if err.status == 405 and "Allow" not in err.headers:
            def offers(rtype: str, interaction: str) -> bool:
                return interaction in (services.resource_types.get(rtype) or {}).get("interactions", ())

            err.headers["Allow"] = allow_header(self.allowed(path, offers))

    def dispatch(self, request: FhirRequest, services: Services) -> FhirResponse:
        from app.audit.events import interaction_for
        from app.fhir.gate import DisclosureGate

        try:
            handler, args = self.match(request.method, request.path)
        except FhirError as err:
            self._explain_405(err, request.path, services)
            raise
        request.public = is_public(request.method, request.path)
        gate = request.gate = DisclosureGate(services, request)
        try:
            response = gate.release(handler(request, services, **args))
        except FhirError as err:
            self._explain_405(err, request.path, services)
            if request.access is not None and request.access.outcome != "0":
                err.audited = True  # the handler recorded a refusal of its own (e.g. one answered as 404)
                services.record_access(gate.audit_record(request.access))
            elif err.status in (401, 403) and not err.audited:
                err.audited = True
                rtype, ids = target_of(request.path)
                services.record_access(AccessRecord(  # what this request (a batch entry's own) attempted
                    interaction_for(request.method, request.path), rtype, ids, "4", err.status, request.principal,
                    _query(services, request),
                    err.diagnostics, patient_ids=sorted({*err.patients, *gate.refused_patients}),
                    remote_addr=request.remote_addr))
            gate.release_error(err)
            raise
        if request.access is not None:
            services.record_access(gate.audit_record(request.access))
        return response


def target_of(path: str) -> tuple[str | None, list[str]]:
    """The resource type and id a request path names (Observation/1/_history/2 -> Observation, [1])."""
    segs = [s for s in path.split("/") if s]
    rtype = segs[0] if segs and segs[0][:1].isupper() else None
    ids = [segs[1]] if len(segs) > 1 and not segs[1].startswith(("$", "_")) else []
    return rtype, ids


def _query(services: Services, request: FhirRequest) -> str | None:
    from app.store.protect import redact_query

    return redact_query(services.repo.protector, request.query_string() or None)


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in path.strip("/").split("/") if s)


def _match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    args: dict[str, str] = {}
    for p, s in zip(pattern, segments, strict=True):
        if p.startswith("{"):
            name = p[1:-1]
            if name == "type" and not s[:1].isupper():
                return None
            if name == "op":
                if not s.startswith("$"):
                    return None
                s = s[1:]
            elif s.startswith(("$", "_")):
                return None
            args[name] = s
        elif p != s:
            return None
    return args
