"""_summary and _elements (search.html#summary, #elements): what of a resource goes on the wire."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from app.core.errors import Issue, bad_request
from app.core.ids import new_id
from app.profiles import PROFILES_DIR

_ALWAYS = {"resourceType", "id", "meta"}
SUMMARY_TABLE = "summary-elements.json"  # scripts/gen_summary_elements.py


@cache
def summary_elements() -> dict[str, frozenset[str]]:
    """The children R4 marks isSummary, of each resource type and of each of its backbone elements."""
    table = json.loads((PROFILES_DIR / SUMMARY_TABLE).read_text(encoding="utf-8"))
    return {path: frozenset(names) for path, names in table.items()}


SUMMARY_MODES = {"true", "false", "text", "data", "count"}


def _subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    tags.append({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"})
    meta["tag"] = tags
    out = dict(resource)
    out["meta"] = meta
    return out


def apply_summary(resource: dict[str, Any], mode: str | None) -> dict[str, Any]:
    if mode in (None, "false"):
        return resource
    if mode not in SUMMARY_MODES:
        raise bad_request(f"_summary must be one of {', '.join(sorted(SUMMARY_MODES))}", expression="_summary")
    rtype = resource.get("resourceType", "")
    if mode == "true":
        return _subsetted(_summary_of(resource, rtype, summary_elements()))
    if mode == "text":
        keep = _ALWAYS | {"text"}
    elif mode == "data":
        return _subsetted({k: v for k, v in resource.items() if k != "text"})
    else:
        return resource
    return _subsetted({k: v for k, v in resource.items() if k in keep})


def _summary_of(node: dict[str, Any], path: str, table: dict[str, frozenset[str]]) -> dict[str, Any]:
    """The summary elements of a resource or backbone element at `path`, its backbone elements pruned in turn
    (a data type inside a summary element is kept whole; a backbone element left with nothing goes, as FHIR has
    no empty elements); a primitive's `_name` goes with its value."""
    keep = table.get(path, frozenset()) | (_ALWAYS if "." not in path else frozenset())
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = key[1:] if key.startswith("_") else key
        if name not in keep:
            continue
        inner = f"{path}.{name}"
        if inner in table:  # a backbone element: its own summary children
            if isinstance(value, list):
                value = [kept for v in value if (kept := _summary_of(v, inner, table) if isinstance(v, dict) else v)]
            elif isinstance(value, dict):
                value = _summary_of(value, inner, table)
            if not value:
                continue
        out[key] = value
    return out


def as_asked(resource: dict[str, Any], summary: str | None, elements: str | None) -> dict[str, Any]:
    """A resource read as `_summary` and `_elements` ask (the query's values, as given)."""
    resource = apply_summary(resource, summary)
    if elements:
        resource = apply_elements(resource, [e.strip() for e in elements.split(",") if e.strip()])
    return resource


def apply_elements(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    if not elements:
        return resource
    wanted = {e.split(".")[-1] if "." in e else e for e in elements}
    return _subsetted({k: v for k, v in resource.items() if k in _ALWAYS or k in wanted})


def outcome_entry(issues: list[Issue]) -> dict[str, Any]:
    """A Bundle entry holding an OperationOutcome about the search (search.mode `outcome`). Its fullUrl is a
    urn:uuid, which R4 requires to be a UUID (Bundle.entry.fullUrl: bdl-7, RFC 4122)."""
    return {"fullUrl": f"urn:uuid:{new_id()}",
            "resource": {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]},
            "search": {"mode": "outcome"}}
