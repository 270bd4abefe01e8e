"""The whole FHIR route table, in one place."""

from __future__ import annotations

from functools import partial
from typing import Any

from app.fhir import conformance as c
from app.fhir import interactions as i
from app.fhir import searching as s
from app.fhir.bundles import process_bundle
from app.fhir.capability import capability_statement, mode_of, terse
from app.fhir.http import FhirResponse
from app.fhir.operations import OPERATIONS
from app.fhir.presentation import as_asked
from app.fhir.router import FhirRequest, Route, Router, allow_header
from app.services import Services


def _metadata(req: FhirRequest, svc: Services) -> FhirResponse:
    """The CapabilityStatement; `mode` (capability.mode_of: `terse` leaves the prose out), then `_summary` and
    `_elements` as on any read (the whole one is about 640 KB)."""
    mode = mode_of([v for k, v in req.params if k == "mode"])  # an unknown mode is refused before any work
    statement = capability_statement(svc, req.base, OPERATIONS)
    if mode == "terse":
        statement = terse(statement)
    return FhirResponse(200, as_asked(statement, req.param("_summary"), req.param("_elements")))


def _operation(level: str, req: FhirRequest, svc: Services, op: str, type: str | None = None,
               id: str | None = None) -> FhirResponse:
    from app.core.errors import FhirError

    spec = OPERATIONS.get(op)
    types = spec.get("types", ()) if spec else ()
    if spec is None or level not in spec["levels"] or (type and types != "*" and type not in types):
        raise FhirError(404, f"operation ${op} is not known at this level", code="not-supported")
    if req.method not in spec["methods"]:
        raise FhirError(405, f"${op} does not accept {req.method}", code="not-supported",
                        headers={"Allow": allow_header(set(spec["methods"]))})
    # The access an operation needs is declared with it ("access": read | search | update | None, or one of
    # these per HTTP method), and decided here by the policy like any interaction: on the instance for
    # instance-level operations.
    access = spec.get("access", "read" if level == "instance" else "search")
    if isinstance(access, dict):
        access = access.get(req.method)
    if access and type:
        svc.policy.require(req.principal, access, type)
    if access and level == "instance" and type and id:
        req.instance = svc.repo.get_doc(type, id)  # the handler works on the version the gate judged
        req.gate.require(type, req.instance, access)
    return spec["handler"](req, svc, type, id) if level != "system" else spec["handler"](req, svc)


def build_router() -> Router:
    router: Router
    routes = [
        Route("GET", ("metadata",), _metadata),
        # The server's own OperationDefinitions, made from the operation table (read and search only; public).
        Route("GET", ("OperationDefinition",), c.search, "search-type"),
        Route("POST", ("OperationDefinition", "_search"), c.search_post, "search-type"),
        Route("GET", ("OperationDefinition", "{id}"), c.read, "read"),
        Route("GET", ("_history",), s.history_system),
        Route("GET", ("{type}",), s.search, "search-type"),
        Route("POST", ("{type}", "_search"), s.search_post, "search-type"),
        Route("GET", ("{type}", "_history"), s.history_type, "history-type"),
        Route("POST", ("{type}",), i.create, "create"),
        Route("PUT", ("{type}",), i.conditional_update, "update"),
        Route("DELETE", ("{type}",), i.conditional_delete, "delete"),
        Route("PATCH", ("{type}",), i.conditional_patch, "patch"),
        Route("GET", ("{type}", "{id}"), i.read, "read"),
        Route("PUT", ("{type}", "{id}"), i.update, "update"),
        Route("PATCH", ("{type}", "{id}"), i.patch, "patch"),
        Route("DELETE", ("{type}", "{id}"), i.delete, "delete"),
        Route("GET", ("{type}", "{id}", "_history"), s.history_instance, "history-instance"),
        Route("GET", ("{type}", "{id}", "_history", "{vid}"), i.vread, "vread"),
        Route("GET", ("Patient", "{id}", "{type}"), s.compartment_search, "search-type"),
    ]
    for method in ("GET", "POST"):
        routes += [
            Route(method, ("{op}",), partial(_operation, "system")),
            Route(method, ("{type}", "{op}"), partial(_operation, "type")),
            Route(method, ("{type}", "{id}", "{op}"), partial(_operation, "instance")),
        ]

    def _bundle(req: FhirRequest, svc: Services) -> FhirResponse:
        return process_bundle(req, svc, router)

    routes.append(Route("POST", (), _bundle))
    router = Router(routes)
    return router


def register_operation(name: str, spec: dict[str, Any]) -> None:
    """For packages (mpi, ehc, auth) that add operations at start-up."""
    OPERATIONS[name] = spec
