"""Search (GET and POST _search) and history (instance, type, system) as FHIR Bundles."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from app.core.errors import FhirError, Issue, bad_request
from app.core.timeutil import naive_utc
from app.federation.search import REMOTE_CURSOR, merge_remote, remote_entries
from app.fhir.gate import FOCUS_PARAMS
from app.fhir.http import FhirResponse, parse_prefer
from app.fhir.interactions import _audit, check_type, refuse_unsupported
from app.fhir.presentation import apply_elements, apply_summary, outcome_entry
from app.fhir.router import FhirRequest
from app.search.parser import non_negative, parse_search, zone_plus
from app.services import Services
from app.store.repository import Stored
from app.store.searcher import decode_cursor, encode_cursor

# Parameters about the response, not the match: the parser never sees them.
CONTROL_PARAMS = {"_format", "_pretty", "_cursor", REMOTE_CURSOR}


def search(req: FhirRequest, svc: Services, type: str, *, within: tuple[str, str] | None = None,
           path: str | None = None, about: str | None = None) -> FhirResponse:
    """GET [type] (and, with `within` and `path`, a compartment search: Patient/{id}/{type}). The bundle's
    links show the caller's own parameters under the path they asked for: the constraints the server adds
    (the compartment, a token's scopes) are added again to every page, never shown. `about`: the patient of the
    compartment, named in the audit event whatever the search found."""
    check_type(svc, type, "search-type")
    own = [(k, v) for k, v in req.params if k not in CONTROL_PARAMS]
    refuse_unsupported(own)
    params = svc.policy.restrict_search(req.principal, type, own + ([within] if within else []))
    path = path or type
    strict = parse_prefer(req.header("prefer")).get("handling") == "strict"
    request = parse_search(type, params, svc.registry, strict=strict, default_count=svc.settings.default_count,
                           max_count=svc.settings.max_count)
    request.cursor = req.param("_cursor")
    gate = req.gate
    # Rows are judged by the disclosure gate before paging and counting: totals, pages and cursors hold only
    # what the caller may see.
    admit = gate.row_admit(type, criteria=request)
    # The self link holds the parameters the search used (search.html): not those it ignored as unknown, and
    # the _count it used (lowered to max_count), which every page link carries on.
    shown = [(k, str(request.count) if k == "_count" and request.count is not None else v)
             for k, v in own if k not in request.ignored]
    if request.summary == "count" or request.count == 0:
        # _summary=count asks for the count itself, whatever _total says; _count=0 with _total=none claims none
        total = None if request.summary != "count" and request.total == "none" else svc.searcher.count(
            request, req.base, admit=admit, admit_of=gate.row_admit)
        _audit(svc, req, "search", type, [], patients=[about] if about else [])
        bundle = _bundle("searchset", total=total)
        bundle["link"] = [{"relation": "self", "url": _url(req, path, shown)}]
        if request.ignored:
            bundle["entry"] = [outcome_entry(_ignored_issues(request.ignored))]
        return FhirResponse(200, bundle)
    count = request.count or svc.settings.default_count
    result = svc.searcher.search(request, count, req.base, admit=admit, admit_of=gate.row_admit)
    entries: list[dict[str, Any]] = []
    withheld = result.withheld
    shown_ids = []
    for doc in result.docs:
        shown_ids.append(doc["_id"])
        entries.append(_entry(req, type, doc, "match", request.summary, request.elements))
    for itype, doc in result.included:
        if gate.admits(itype, doc):
            entries.append(_entry(req, itype, doc, "include", request.summary, request.elements))
    issues = _ignored_issues(request.ignored)
    # The rows withheld are counted while a page is read. Only a search whose matches all fit on one page read
    # them all; a page of a longer one would tell how many hidden rows sort before its last row, and so where
    # hidden records sort (_sort=code: a binary search over the codes of a resident's diagnoses).
    whole = result.next_cursor is None and not request.cursor
    if withheld and whole and _names_only_whose(svc, type, own):
        issues.append(Issue(f"{withheld} matching resource(s) withheld: no consent covers this client",
                            "suppressed", "information"))
    if issues:
        entries.append(outcome_entry(issues))
    bundle = _bundle("searchset", total=result.total)
    kept = [(k, v) for k, v in params if k not in request.ignored]
    links = [{"relation": "self", "url": _url(req, path, shown, req.param("_cursor"))}]
    if result.next_cursor:
        links.append({"relation": "next", "url": _url(req, path, shown, result.next_cursor)})
    if result.prev_cursor:
        links.append({"relation": "previous", "url": _url(req, path, shown, result.prev_cursor)})
    bundle["link"] = links
    bundle["entry"] = entries
    merge_remote(bundle, req, *remote_entries(req, svc, type, kept))  # records at other provinces' nodes
    _audit(svc, req, "search", type, shown_ids, withheld=withheld, patients=[about] if about else [])
    return FhirResponse(200, bundle)


def _ignored_issues(ignored: list[str]) -> list[Issue]:
    """A warning for each unknown parameter that lenient handling ignored."""
    return [Issue(f"unknown search parameter {name!r} was ignored", "not-supported", "warning", [name])
            for name in ignored]


def _url(req: FhirRequest, path: str, params: list[tuple[str, str]], cursor: str | None = None) -> str:
    query = [(k, v) for k, v in params if k != "_cursor"]
    if cursor:
        query.append(("_cursor", cursor))
    return f"{req.base}/{path}" + (f"?{urlencode(query)}" if query else "")


def _entry(req: FhirRequest, rtype: str, doc: dict[str, Any], mode: str, summary: str | None,
           elements: list[str]) -> dict[str, Any]:
    res = doc["res"]
    res = apply_summary(res, summary)
    if elements:
        res = apply_elements(res, elements)
    return {"fullUrl": f"{req.base}/{rtype}/{doc['_id']}", "resource": res, "search": {"mode": mode}}


def _names_only_whose(svc: Services, rtype: str, own: list[tuple[str, str]]) -> bool:
    """Whether the caller's criteria say only whose records it asks for (patient, subject, _id, and chains from
    them, such as `patient.identifier`). Only then is the count of withheld records given: it tells that the
    resident has records here, which a clinician needs to ask for consent. Under any other criterion it would
    answer that criterion about records the caller may not see (`code=B20`: whether the resident has HIV)."""
    request = parse_search(rtype, own, svc.registry, strict=False, default_count=1, max_count=1)
    return all((f.code in FOCUS_PARAMS or f.code == "_compartment") and f.has is None for f in request.filters)


def _bundle(kind: str, total: int | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind,
                              "meta": {"lastUpdated": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}
    if total is not None:
        bundle["total"] = total
    return bundle


# -- history --------------------------------------------------------------------------------------------

def _history_args(req: FhirRequest, svc: Services) -> tuple[datetime | None, int]:
    if req.param("_at") is not None:  # refused rather than ignored: the whole history is not what was asked
        raise bad_request("_at is not supported on history; use _since", expression="_at", code="not-supported")
    since = None
    raw = req.param("_since")
    if raw:
        text = zone_plus(raw.strip())  # a '+' of the zone sent unencoded arrives as a space
        try:
            since = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise bad_request(f"_since must be an instant, e.g. 2024-01-01T00:00:00Z; got {raw!r}",
                              expression="_since") from None
        since = naive_utc(since)
    raw_count = req.param("_count")
    count = svc.settings.default_count
    if raw_count is not None:
        count = min(non_negative("_count", raw_count), svc.settings.max_count)
    return since, count


def _bad_cursor() -> FhirError:
    return bad_request("_cursor is not a cursor this server issued", expression="_cursor")


def _history_bundle(req: FhirRequest, versions: list[Stored], next_cursor: str | None,
                    total: int | None) -> dict[str, Any]:
    bundle = _bundle("history", total=total)
    entries = []
    for s in versions:
        entry: dict[str, Any] = {"fullUrl": f"{req.base}/{s.resource_type}/{s.id}"}
        method = "DELETE" if s.deleted else ("POST" if s.vid == 1 else "PUT")
        url = f"{s.resource_type}/{s.id}" if method != "POST" else s.resource_type
        entry["request"] = {"method": method, "url": url}
        status = "204 No Content" if s.deleted else ("201 Created" if s.vid == 1 else "200 OK")
        entry["response"] = {"status": status, "etag": f'W/"{s.vid}"',
                             "lastModified": s.ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
        if s.resource is not None:
            entry["resource"] = s.resource
        entries.append(entry)
    bundle["entry"] = entries
    kept = [(k, v) for k, v in req.params if k != "_cursor"]
    links = [{"relation": "self", "url": _page_url(req, kept, req.param("_cursor"))}]
    if next_cursor:
        links.append({"relation": "next", "url": _page_url(req, kept, next_cursor)})
    bundle["link"] = links
    return bundle


def _page_url(req: FhirRequest, params: list[tuple[str, str]], cursor: str | None) -> str:
    query = list(params) + ([("_cursor", cursor)] if cursor else [])
    return f"{req.base}/{req.path}" + (f"?{urlencode(query)}" if query else "")


def history_instance(req: FhirRequest, svc: Services, type: str, id: str) -> FhirResponse:
    check_type(svc, type, "history-instance")
    svc.policy.require(req.principal, "history", type)
    current = svc.repo.get_doc(type, id)
    req.gate.require(type, current)
    since, count = _history_args(req, svc)
    below = None
    if req.param("_cursor"):
        _, values = decode_cursor(req.param("_cursor") or "", 1)
        below = values[0]
        if not isinstance(below, int) or isinstance(below, bool) or below < 1:  # never silently page 1 again
            raise _bad_cursor()
    page = svc.repo.instance_history(type, id, since, count + 1, below=below)
    more = len(page) > count
    page = page[:count]
    versions = _disclosed(req, page)
    next_cursor = encode_cursor("n", [page[-1].vid]) if more and page else None
    total = None if since or current is None else int(current["vid"])
    _audit(svc, req, "history", type, [id])
    return FhirResponse(200, _history_bundle(req, versions, next_cursor, total))


def history_type(req: FhirRequest, svc: Services, type: str) -> FhirResponse:
    check_type(svc, type, "history-type")
    svc.policy.require(req.principal, "history", type)
    return _history_of(req, svc, [type], type)


def history_system(req: FhirRequest, svc: Services) -> FhirResponse:
    svc.policy.require(req.principal, "history", None)
    types = [t for t, conf in svc.resource_types.items() if "history-type" in conf["interactions"]]
    return _history_of(req, svc, types, None)


def _history_of(req: FhirRequest, svc: Services, types: list[str], rtype: str | None) -> FhirResponse:
    """A page of the versions of many resources, newest first, made only of versions the caller may see; the
    cursor holds the position (lastUpdated, version, type, id) of the last version shown."""
    since, count = _history_args(req, svc)
    last: tuple[Any, ...] | None = None
    if req.param("_cursor"):
        _, values = decode_cursor(req.param("_cursor") or "", 4)
        ts, vid, vtype, rid = values
        # The position of a version shown: (lastUpdated, versionId, type, id), compared with stored versions.
        if not (isinstance(ts, datetime) and isinstance(vid, int) and not isinstance(vid, bool)
                and isinstance(vtype, str) and isinstance(rid, str)):
            raise _bad_cursor()
        last = (naive_utc(ts), vid, vtype, rid)
    shown: list[Stored] = []
    exhausted = False
    while len(shown) <= count and not exhausted:
        want = count + 21
        batch = svc.repo.type_history(types, since, want, until=last[0] if last else None)
        exhausted = len(batch) < want
        batch = [v for v in batch if last is None or _hkey(v) < last]
        if not batch:
            break
        for v in batch:
            last = _hkey(v)
            if _disclosed(req, [v]):
                shown.append(v)
                if len(shown) > count:
                    break
    more = len(shown) > count
    shown = shown[:count]
    next_cursor = encode_cursor("n", list(_hkey(shown[-1]))) if more and shown else None
    _audit(svc, req, "history", rtype, [])
    return FhirResponse(200, _history_bundle(req, shown, next_cursor, None))


def _hkey(v: Stored) -> tuple[Any, ...]:
    return (v.ts, v.vid, v.resource_type, v.id)


def _disclosed(req: FhirRequest, versions: list[Stored]) -> list[Stored]:
    """The versions the disclosure gate lets out (each judged on its own content and its record's province);
    the rest are counted as withheld."""
    gate = req.gate
    out = []
    for v in versions:
        ok = gate.tombstone_ok(v.resource_type, v.id, v.province) if v.resource is None else gate.decide(
            v.resource_type, {"_id": v.id, "vid": v.vid, "prov": v.province, "res": v.resource}).allowed
        if ok:
            out.append(v)
        else:
            gate.withheld += 1
    return out


def compartment_search(req: FhirRequest, svc: Services, id: str, type: str) -> FhirResponse:
    """GET Patient/{id}/{type}: the search of that type within the patient's compartment (R4 search.html#3.1.1.5.4,
    from the patient CompartmentDefinition)."""
    from app.auth.compartment import compartment_search as constraint

    check_type(svc, type, "search-type")
    where = constraint(svc.profiles_dir, type, id, set(svc.registry.params(type)))
    if where is None:
        raise FhirError(404, f"{type} is not in the Patient compartment", code="not-supported")
    return search(req, svc, type, within=where, path=f"Patient/{id}/{type}", about=id)


def search_post(req: FhirRequest, svc: Services, type: str) -> FhirResponse:
    """POST [type]/_search with application/x-www-form-urlencoded parameters (and any in the URL)."""
    form = req.body.get("_form") if isinstance(req.body, dict) else None
    if form is None:
        raise FhirError(415, "POST _search needs Content-Type application/x-www-form-urlencoded")
    req.params = list(req.params) + list(form)
    req.method = "GET"
    return search(req, svc, type)
