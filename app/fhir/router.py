"""A FHIR router with no web framework inside (Medplum's habit): handlers are (FhirRequest, Services) ->
FhirResponse, and the whole route table is in routes.py. Bundle entries are dispatched through the same
router as HTTP requests, so batch and transaction behave exactly like the interactions they contain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from app.core.access import Principal
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


@dataclass
class Route:
    method: str
    pattern: tuple[str, ...]  # literal segments, "{type}", "{id}", "{vid}", "{op}"
    handler: Handler


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        segments = tuple(s for s in path.strip("/").split("/") if s) if path.strip("/") else ()
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

    def dispatch(self, request: FhirRequest, services: Services) -> FhirResponse:
        handler, args = self.match(request.method, request.path)
        return handler(request, services, **args)


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
