"""The route template of a request, for metrics and logs: `/fhir/Patient/{id}`, never the raw path.

Pure: no Flask. The FHIR routes are one catch-all in app/fhir, so their template is derived from the path
the way the router reads it (type, id, _history, $operation); other routes use their Flask rule.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

INSTANCE_INTERACTIONS = {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
TYPE_INTERACTIONS = {"GET": "search-type", "POST": "create", "PUT": "update-conditional",
                     "DELETE": "delete-conditional", "PATCH": "patch-conditional"}


@dataclass(frozen=True)
class Route:
    template: str  # e.g. /fhir/Patient/{id}/_history/{vid}
    interaction: str  # FHIR interaction (read, search-type, create, ...), $operation, or the endpoint name
    resource_type: str  # "" when none


def fhir_route(method: str, path: str, types: Collection[str] = (), operations: Collection[str] = ()) -> Route:
    """path: what follows /fhir/ (no query string). A type or operation not in `types` / `operations`
    (names without the $) is written `?`, so a client cannot grow the metrics' label sets."""

    def op(name: str) -> str:
        return name if name[1:] in operations else "$?"

    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        return Route("/fhir", "batch/transaction" if method == "POST" else "search-system", "")
    head = parts[0]
    if head == "metadata":
        return Route("/fhir/metadata", "capabilities", "")
    if head.startswith(".well-known"):
        return Route("/fhir/" + "/".join(parts), "smart-configuration", "")
    if head.startswith("$"):
        return Route(f"/fhir/{op(head)}", op(head), "")
    if head == "_history":
        return Route("/fhir/_history", "history-system", "")
    if head == "_search":
        return Route("/fhir/_search", "search-system", "")
    rtype = head if head in types else "?"
    if len(parts) == 1:
        return Route(f"/fhir/{rtype}", TYPE_INTERACTIONS.get(method, method.lower()), rtype)
    second = parts[1]
    if second == "_search":
        return Route(f"/fhir/{rtype}/_search", "search-type", rtype)
    if second == "_history":
        return Route(f"/fhir/{rtype}/_history", "history-type", rtype)
    if second.startswith("$"):
        return Route(f"/fhir/{rtype}/{op(second)}", op(second), rtype)
    if len(parts) == 2:
        return Route(f"/fhir/{rtype}/{{id}}", INSTANCE_INTERACTIONS.get(method, method.lower()), rtype)
    third = parts[2]
    if third == "_history":
        if len(parts) >= 4:
            return Route(f"/fhir/{rtype}/{{id}}/_history/{{vid}}", "vread", rtype)
        return Route(f"/fhir/{rtype}/{{id}}/_history", "history-instance", rtype)
    if third.startswith("$"):
        return Route(f"/fhir/{rtype}/{{id}}/{op(third)}", op(third), rtype)
    if third in types:  # compartment search Patient/{id}/Observation
        return Route(f"/fhir/{rtype}/{{id}}/{third}", "search-compartment", third)
    return Route(f"/fhir/{rtype}/{{id}}/?", "unknown", rtype)
