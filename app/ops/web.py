"""Per-request facts the metrics and the logs share (Flask): the route template and the start time."""

from __future__ import annotations

import time
from typing import Any

from flask import current_app, g, request

from app.ops.routes import Route, fhir_route


def request_route() -> Route:
    """The route of the current request, computed once."""
    cached: Route | None = g.get("ehc_route")
    if cached is not None:
        return cached
    path = request.path
    if path == "/fhir" or path.startswith("/fhir/"):
        svc: Any = current_app.extensions.get("ehc")
        types = svc.resource_types if svc is not None else ()
        route = fhir_route(request.method, path[len("/fhir"):], types, _operations())
    elif request.url_rule is not None:
        route = Route(request.url_rule.rule, request.endpoint or request.url_rule.rule, "")
    else:
        route = Route("?", "not-found", "")
    g.ehc_route = route
    return route


def _operations() -> frozenset[str]:
    ops: frozenset[str] | None = current_app.config.get("EHC_OPERATION_NAMES")
    if ops is None:
        from app.fhir.operations import OPERATIONS

        ops = frozenset(OPERATIONS)
        current_app.config["EHC_OPERATION_NAMES"] = ops
    return ops


def mark_start() -> None:
    if "ehc_t0" not in g:
        g.ehc_t0 = time.perf_counter()


def elapsed() -> float:
    t0: float = g.get("ehc_t0", time.perf_counter())
    return time.perf_counter() - t0
