"""The server's own OperationDefinitions, read and searched: `GET OperationDefinition/{id}`,
`GET OperationDefinition?url=...` (and any other of its search parameters), `POST OperationDefinition/_search`.

They are made from the operation table (app.fhir.operations.definition), not stored: the CapabilityStatement names
them by canonical (`https://ehc.example.cn/fhir/OperationDefinition/<id>`, the same on every node), and a client
resolves that canonical here with `?url=`. OperationDefinition is read and search only (resource-types.json), so
every write answers 405 and stores nothing. They are public like /metadata (app.fhir.router.PUBLIC): no token is
needed, the disclosure gate does not judge them and the audit trail does not record their reads (they are the
server's, not records: anyone may read them, and nobody can fill the trail with them).

Search runs in memory on the few definitions, with the same parser and filters as the store's searches
(app.search.matcher.resource_matches), so every declared parameter and modifier works. Chains and `_has` need
stored resources behind them and are refused (400); `_include` and `_revinclude` find nothing (the definitions
refer to HL7's, which are not here, and a stored resource cannot refer to one: references are checked against the
store). `meta.versionId` is a hash of the content (the ETag), `meta.lastUpdated` the start of this process.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlencode

from app.core.errors import FhirError, Issue, bad_request, not_found
from app.core.timeutil import http_date, to_instant, utcnow
from app.fhir.http import FhirResponse, parse_prefer
from app.fhir.interactions import check_type, not_modified_since, refuse_unsupported
from app.fhir.operations import OPERATIONS
from app.fhir.operations.definition import operation_definitions
from app.fhir.presentation import apply_elements, apply_summary, as_asked, outcome_entry
from app.fhir.router import FhirRequest
from app.search.compile import compile_filter, compile_sort
from app.search.extract import extract_index
from app.search.matcher import resource_matches
from app.search.parser import parse_search
from app.search.request import SearchRequest
from app.services import Services
from app.store.searcher import decode_cursor, encode_cursor, in_sort_order, tie_broken

TYPE = "OperationDefinition"
CONTROL_PARAMS = {"_format", "_pretty", "_cursor"}
_STARTED = utcnow().replace(microsecond=0)  # the definitions change only with the code, so with a new process


def served() -> dict[str, dict[str, Any]]:
    """id -> the served OperationDefinition (with meta), from the operation table as it is now."""
    out: dict[str, dict[str, Any]] = {}
    for od in operation_definitions(OPERATIONS):
        digest = hashlib.sha256(json.dumps(od, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
        meta = {"versionId": digest[:16], "lastUpdated": to_instant(_STARTED)}
        out[od["id"]] = {"resourceType": TYPE, "id": od["id"], "meta": meta,
                         **{k: v for k, v in od.items() if k not in ("resourceType", "id")}}
    return out


def _etag(od: dict[str, Any]) -> str:
    return f'W/"{od["meta"]["versionId"]}"'


def _not_modified(req: FhirRequest, od: dict[str, Any]) -> bool:
    inm = req.header("if-none-match")
    if inm:
        tags = [t.strip() for t in inm.split(",") if t.strip()]
        return "*" in tags or any((t[2:] if t.startswith("W/") else t).strip('"') == od["meta"]["versionId"]
                                  for t in tags)
    return not_modified_since(req.header("if-modified-since"), _STARTED)


def read(req: FhirRequest, svc: Services, id: str) -> FhirResponse:
    """GET OperationDefinition/{id}."""
    check_type(svc, TYPE, "read")
    od = served().get(id)
    if od is None:
        raise not_found(f"{TYPE}/{id} is not known")
    headers = {"ETag": _etag(od), "Last-Modified": http_date(_STARTED)}
    if _not_modified(req, od):
        return FhirResponse(304, None, {"ETag": headers["ETag"]})
    return FhirResponse(200, as_asked(od, req.param("_summary"), req.param("_elements")), headers)


def search_post(req: FhirRequest, svc: Services) -> FhirResponse:
    """POST OperationDefinition/_search with form parameters (and any in the URL), as for every type."""
    form = req.body.get("_form") if isinstance(req.body, dict) else None
    if form is None:
        raise FhirError(415, "POST _search needs Content-Type application/x-www-form-urlencoded")
    req.params = list(req.params) + list(form)
    req.method = "GET"
    return search(req, svc)


def _no_stored_search(rtype: str, sub: SearchRequest) -> list[str]:
    raise bad_request(f"chained and _has searches are not supported on {TYPE} (the definitions are not stored)",
                      code="not-supported")


def search(req: FhirRequest, svc: Services) -> FhirResponse:
    """GET OperationDefinition?...: the served definitions that match, in the order asked (by id by default)."""
    check_type(svc, TYPE, "search-type")
    own = [(k, v) for k, v in req.params if k not in CONTROL_PARAMS]
    refuse_unsupported(own)
    strict = parse_prefer(req.header("prefer")).get("handling") == "strict"
    request = parse_search(TYPE, own, svc.registry, strict=strict, default_count=svc.settings.default_count,
                           max_count=svc.settings.max_count)
    flt = compile_filter(request, svc.registry, _no_stored_search, base_url=req.base)
    matches = [od for od in served().values() if resource_matches(flt, od, TYPE, svc.registry)]
    matches = _sorted(matches, request, svc)
    offset = 0
    if req.param("_cursor"):
        _, values = decode_cursor(req.param("_cursor") or "", 1)
        if not isinstance(values[0], int) or values[0] < 0:
            raise bad_request("_cursor is not a cursor this server issued", expression="_cursor")
        offset = values[0]
    shown = [(k, str(request.count) if k == "_count" and request.count is not None else v)
             for k, v in own if k not in request.ignored]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                              "meta": {"lastUpdated": to_instant(utcnow())}}
    if request.total != "none" or request.summary == "count":
        bundle["total"] = len(matches)
    links = [{"relation": "self", "url": _url(req, shown, req.param("_cursor"))}]
    entries: list[dict[str, Any]] = []
    if request.summary != "count" and request.count != 0:
        count = request.count or svc.settings.default_count
        page = matches[offset:offset + count]
        if offset + count < len(matches):
            links.append({"relation": "next", "url": _url(req, shown, encode_cursor("n", [offset + count]))})
        if offset > 0:
            links.append({"relation": "previous",
                          "url": _url(req, shown, encode_cursor("n", [max(0, offset - count)]))})
        for od in page:
            res = apply_summary(od, request.summary)
            if request.elements:
                res = apply_elements(res, request.elements)
            entries.append({"fullUrl": f"{req.base}/{TYPE}/{od['id']}", "resource": res, "search": {"mode": "match"}})
    if request.ignored:
        entries.append(outcome_entry([Issue(f"unknown search parameter {name!r} was ignored", "not-supported",
                                            "warning", [name]) for name in request.ignored]))
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return FhirResponse(200, bundle)


def _sorted(matches: list[dict[str, Any]], request: SearchRequest, svc: Services) -> list[dict[str, Any]]:
    """By the request's _sort, then by id: the store's order (searcher.in_sort_order) of the documents these would
    be, with the sort keys a stored document would carry."""
    rows = [{"_id": od["id"], "so": extract_index(od, svc.registry)[1] if request.sort else {}, "od": od}
            for od in matches]
    return [row["od"] for row in in_sort_order(rows, tie_broken(compile_sort(request)))]


def _url(req: FhirRequest, params: list[tuple[str, str]], cursor: str | None) -> str:
    query = [(k, v) for k, v in params if k != "_cursor"] + ([("_cursor", cursor)] if cursor else [])
    return f"{req.base}/{TYPE}" + (f"?{urlencode(query)}" if query else "")
