"""batch and transaction Bundles (FHIR R4 http.html#transaction).

A batch runs each entry through the router on its own. A transaction is resolved completely first
(ids assigned, urn:uuid and conditional references rewritten, every resource validated, entries in the
spec's order DELETE, POST, PUT/PATCH, GET), then written through the journal, so that it is stored
completely or not at all.
"""

from __future__ import annotations

import base64
import copy
from contextlib import ExitStack
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from app.core import fhirjson
from app.core.errors import FhirError, bad_request, info_outcome
from app.core.ids import new_id
from app.fhir.http import FhirResponse, check_json_depth, parse_etag, parse_prefer
from app.fhir.interactions import (
    _audit,
    _find,
    apply_patch,
    check_type,
    criteria_lease,
    criteria_params,
    validate_inside,
)
from app.fhir.router import FhirRequest, Router
from app.services import Services
from app.store.events import StoreEvent
from app.store.journal import PlannedWrite
from app.store.repository import Stored

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


def process_bundle(req: FhirRequest, svc: Services, router: Router) -> FhirResponse:
    bundle = req.body or {}
    if bundle.get("resourceType") != "Bundle":
        raise bad_request("POST to the base URL needs a Bundle of type batch or transaction",
                          expression="resourceType")
    kind = bundle.get("type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise bad_request("Bundle.entry must be a list", expression="Bundle.entry")
    limit = svc.settings.max_bundle_entries
    if len(entries) > limit:  # one request must not hold a worker for the work of thousands
        raise FhirError(413, f"a Bundle may hold at most {limit} entries (EHC_MAX_BUNDLE_ENTRIES); this one holds "
                             f"{len(entries)}: send it in parts", code="too-costly", expression="Bundle.entry")
    for i, entry in enumerate(entries):
        _check_entry(entry, f"Bundle.entry[{i}]")
    if kind == "batch":
        return _batch(req, svc, router, entries)
    if kind == "transaction":
        return _transaction(req, svc, router, entries)
    raise bad_request(f"Bundle.type must be batch or transaction, not {kind!r}", expression="Bundle.type")


def _check_entry(entry: Any, where: str) -> None:
    """What the bundle's processing reads of an entry has the JSON type it expects (else 400 naming it)."""
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict) or not isinstance(request.get("method"), str) \
            or request["method"] not in ORDER or not isinstance(request.get("url"), str) or not request["url"]:
        raise bad_request(f"{where}.request needs a method (GET, POST, PUT, PATCH, DELETE) and a url",
                          expression=f"{where}.request")
    for field in ("ifMatch", "ifNoneMatch", "ifNoneExist", "ifModifiedSince"):
        if not isinstance(request.get(field, ""), str):
            raise bad_request(f"{where}.request.{field} must be a string", expression=f"{where}.request.{field}")
    if not isinstance(entry.get("fullUrl", ""), str):
        raise bad_request(f"{where}.fullUrl must be a string", expression=f"{where}.fullUrl")
    if not isinstance(entry.get("resource", {}), dict):
        raise bad_request(f"{where}.resource must be a resource (a JSON object)", expression=f"{where}.resource")


def _entry_request(req: FhirRequest, entry: dict[str, Any]) -> FhirRequest:
    r = entry["request"]
    parts = urlsplit(r["url"])
    path = parts.path
    if req.base and r["url"].startswith(req.base):
        path = urlsplit(r["url"][len(req.base):]).path
    headers = {}
    for field, header in (("ifMatch", "if-match"), ("ifNoneMatch", "if-none-match"),
                          ("ifNoneExist", "if-none-exist"), ("ifModifiedSince", "if-modified-since")):
        if r.get(field):
            headers[header] = r[field]
    body = entry.get("resource")
    if r["method"] == "PATCH" and isinstance(body, dict) and body.get("resourceType") == "Binary":
        # FHIR carries a JSON Patch in a transaction as a Binary holding the patch document
        try:
            patch = fhirjson.loads(base64.b64decode(body.get("data", ""), validate=True))  # decimals kept
        except (ValueError, TypeError, RecursionError, fhirjson.JsonError):
            raise bad_request("a PATCH entry's Binary must hold a base64-encoded JSON Patch",
                              expression="Bundle.entry.resource.data") from None
        check_json_depth(patch)
        body = {"_patch": patch}
    elif r["method"] == "PATCH" and isinstance(body, dict) and body.get("resourceType") == "Parameters":
        body = {"_fhirpath_patch": body}  # a FHIRPath Patch
    if req.header("prefer") and "prefer" not in headers:
        headers["prefer"] = req.header("prefer") or ""  # Prefer applies to every entry (http.html#transaction)
    return FhirRequest(r["method"], path.strip("/"), parse_qsl(parts.query, keep_blank_values=True), headers,
                       body, base=req.base, principal=req.principal, write=req.write,
                       remote_addr=req.remote_addr, in_transaction=True)


def _response_entry(resp: FhirResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"response": {"status": str(resp.status)}}
    if "Location" in resp.headers:
        out["response"]["location"] = resp.headers["Location"]
    if "ETag" in resp.headers:
        out["response"]["etag"] = resp.headers["ETag"]
    if resp.body is not None:
        if resp.body.get("resourceType") == "OperationOutcome" and resp.status >= 400:
            out["response"]["outcome"] = resp.body
        else:
            out["resource"] = resp.body
    return out


def _batch(req: FhirRequest, svc: Services, router: Router, entries: list[dict[str, Any]]) -> FhirResponse:
    out = []
    for entry in entries:
        try:
            resp = router.dispatch(_entry_request(req, entry), svc)
        except FhirError as err:
            resp = FhirResponse(err.status, err.outcome())
        out.append(_response_entry(resp))
    return FhirResponse(200, {"resourceType": "Bundle", "type": "batch-response", "entry": out})


def _rewrite(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in mapping:
                out[k] = mapping[v]
            else:
                out[k] = _rewrite(v, mapping)
        return out
    if isinstance(node, list):
        return [_rewrite(x, mapping) for x in node]
    return node


def _conditional_refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and "?" in v and "://" not in v:
                found.add(v)
            else:
                _conditional_refs(v, found)
    elif isinstance(node, list):
        for x in node:
            _conditional_refs(x, found)


def _creating_criteria(subs: list[FhirRequest]) -> dict[int, str]:
    """Entry -> the criteria lease of each entry that creates a resource when nothing matches (ifNoneExist, a
    conditional PUT): the same leases as the single interactions take, so that a transaction and a concurrent
    request (or transaction) with the same criteria do not both create."""
    names = {}
    for i, sub in enumerate(subs):
        rtype = sub.path.split("/")[0]
        if sub.method == "POST" and sub.header("if-none-exist"):
            names[i] = criteria_lease(rtype, criteria_params(sub.header("if-none-exist") or ""))
        elif sub.method == "PUT" and "/" not in sub.path and sub.params:
            names[i] = criteria_lease(rtype, sub.params)
    return names


def _transaction(req: FhirRequest, svc: Services, router: Router,
                 entries: list[dict[str, Any]]) -> FhirResponse:
    subs = [_entry_request(req, entry) for entry in entries]
    leases = _creating_criteria(subs)
    with ExitStack() as held:
        # Held from the searches to the writes; taken in one order, so two transactions sharing criteria
        # cannot each hold one and wait for the other.
        for name in sorted(set(leases.values())):
            held.enter_context(svc.leases.hold(name))
        plans, writes, write_index, results = _plan_and_apply(req, svc, entries, subs, leases)
    # 4. The response, in the order of the request (Prefer: return=minimal | representation | OperationOutcome).
    prefer = parse_prefer(req.header("prefer")).get("return", "representation")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        plan = plans.get(i)
        method = entry["request"]["method"]
        if method == "GET":
            try:
                resp = router.dispatch(subs[i], svc)  # GET entries are not planned: their request is as parsed
            except FhirError as err:
                resp = FhirResponse(err.status, err.outcome())
            out.append(_response_entry(resp))
            continue
        assert plan is not None
        if plan["kind"] == "noop":
            status = "200 OK" if method == "POST" else "204 No Content"
            item: dict[str, Any] = {"response": {"status": status}}
            if plan["id"]:
                item["response"]["location"] = f"{req.base}/{plan['type']}/{plan['id']}"
            out.append(item)
            continue
        stored = results[write_index[i]]
        if stored is None:
            out.append({"response": {"status": "204 No Content"}})
            continue
        status = "201 Created" if stored.vid == 1 else ("204 No Content" if stored.deleted else "200 OK")
        item = {"fullUrl": f"{req.base}/{stored.resource_type}/{stored.id}",
                "response": {"status": status, "etag": f'W/"{stored.vid}"',
                             "location": f"{req.base}/{stored.resource_type}/{stored.id}/_history/{stored.vid}",
                             "lastModified": stored.ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}}
        if stored.resource is not None and prefer == "representation":
            item["resource"] = stored.resource
        elif stored.resource is not None and prefer == "operationoutcome":
            item["response"]["outcome"] = info_outcome(f"{stored.resource_type}/{stored.id} version {stored.vid}")
        out.append(item)
    _audit(svc, req, "transaction", None, [f"{w.resource_type}/{w.id}" for w in writes])
    return FhirResponse(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": out})


def _plan_and_apply(req: FhirRequest, svc: Services, entries: list[dict[str, Any]], subs: list[FhirRequest],
                    leases: dict[int, str]
                    ) -> tuple[dict[int, dict[str, Any]], list[PlannedWrite], dict[int, int], list[Stored | None]]:
    """Steps 1-3 of a transaction, then the journal: the plan of each entry, the writes and the stored results.
    `leases`: the criteria lease of each entry that may create (_creating_criteria)."""
    order = sorted(range(len(entries)), key=lambda i: ORDER[entries[i]["request"]["method"]])
    mapping: dict[str, str] = {}
    plans: dict[int, dict[str, Any]] = {}
    written: dict[tuple[str, str], int] = {}  # (type, id) -> the entry that writes it
    creating: dict[str, int] = {}  # the criteria (lease name) of a conditional write that creates -> its entry
    # 1. Decide every entry's target id, so references between entries can be rewritten.
    for i in order:
        entry = entries[i]
        sub = subs[i]
        method = sub.method
        segments = sub.path.split("/")
        rtype = segments[0]
        where = f"Bundle.entry[{i}]"
        if method == "GET":
            continue
        check_type(svc, rtype, {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method])
        if method == "POST":
            existing = None
            if sub.header("if-none-exist"):
                criteria = criteria_params(sub.header("if-none-exist") or "")
                key = leases[i]
                if key in creating:  # an earlier entry creates what these criteria match: that one, not a twin
                    existing = plans[creating[key]]["id"]
                else:
                    matches = _find(req, svc, rtype, criteria, limit=2)
                    if len(matches) > 1:
                        raise FhirError(412, f"{where}: ifNoneExist matches more than one {rtype}", expression=where)
                    existing = matches[0]["_id"] if matches else None
                    if matches:
                        req.gate.require(rtype, matches[0])  # the match's id leaves only if the caller may see it
                    else:
                        creating[key] = i
            if existing:
                plans[i] = {"kind": "noop", "type": rtype, "id": existing, "sub": sub}
            else:
                resource = copy.deepcopy(entry.get("resource") or {})
                svc.events.fire(StoreEvent("pre-create", rtype, resource, req.write))
                known = resource.pop("_ehc_existing", None)
                # The master patient index recognised the resident: the entry becomes an update of that record.
                plans[i] = {"kind": "put" if known else "create", "type": rtype, "id": known or new_id(),
                            "sub": sub, "resource": resource, "pre_fired": True,
                            "registration": bool(known) and svc.repo.get_raw(rtype, known) is not None}
        else:
            if len(segments) >= 2:
                rid = segments[1]
            elif sub.params:
                matches = _find(req, svc, rtype, sub.params, limit=2)
                if len(matches) > 1:
                    raise FhirError(412, f"{where}: the conditional URL matches more than one {rtype}",
                                    expression=where)
                if not matches and method == "DELETE":
                    plans[i] = {"kind": "noop", "type": rtype, "id": None, "sub": sub}
                    continue
                if not matches and method == "PATCH":  # as PATCH [type]?criteria answers
                    raise FhirError(404, f"{where}: no {rtype} matches the conditional URL", code="not-found",
                                    expression=where)
                if not matches:  # a conditional update that creates: twice would make two
                    key = leases[i]
                    if key in creating:
                        raise bad_request(f"{where} and Bundle.entry[{creating[key]}] both create what the same "
                                          "criteria match: a resource may appear in a transaction once",
                                          expression=where)
                    creating[key] = i
                rid = matches[0]["_id"] if matches else (entry.get("resource") or {}).get("id") or new_id()
            else:
                raise bad_request(f"{where}.request.url needs an id or search criteria", expression=where)
            plans[i] = {"kind": method.lower(), "type": rtype, "id": rid, "sub": sub}
        if plans[i]["kind"] != "noop":  # http.html#trules: a resource may appear in a transaction once
            target = (rtype, plans[i]["id"])
            if target in written:
                raise bad_request(f"{where} writes {rtype}/{target[1]}, as Bundle.entry[{written[target]}] does: a "
                                  "resource may appear in a transaction once", expression=where)
            written[target] = i
        if entry.get("fullUrl"):
            mapping[entry["fullUrl"]] = f"{rtype}/{plans[i]['id']}"
    # 2. Conditional references ("Patient?identifier=...") resolve to exactly one resource.
    cond: set[str] = set()
    for entry in entries:
        _conditional_refs(entry.get("resource"), cond)
    for ref in cond:
        rtype, query = ref.split("?", 1)
        matches = _find(req, svc, rtype, parse_qsl(query), limit=2)
        if len(matches) != 1:
            raise FhirError(412, f"the conditional reference {ref!r} matches {len(matches)} resources, not one")
        mapping[ref] = f"{rtype}/{matches[0]['_id']}"
    # 3. Build the writes: validated, references rewritten.
    writes: list[PlannedWrite] = []
    write_index: dict[int, int] = {}
    for i in order:
        plan = plans.get(i)
        if plan is None or plan["kind"] == "noop":
            continue
        rtype, rid, sub = plan["type"], plan["id"], plan["sub"]
        where = f"Bundle.entry[{i}].resource"
        resource, base = None, None
        if plan["kind"] in ("create", "put"):
            resource = _rewrite(copy.deepcopy(plan.get("resource") or entries[i].get("resource") or {}), mapping)
            if resource.get("resourceType") != rtype:
                raise bad_request(f"{where}.resourceType must be {rtype}", expression=f"{where}.resourceType")
            resource["id"] = rid
            validate_inside(svc, resource, rtype, where)
            if not plan.get("pre_fired"):
                svc.events.fire(StoreEvent("pre-update", rtype, resource, req.write))
                resource.pop("_ehc_existing", None)
        elif plan["kind"] == "patch":
            doc = svc.repo.get_doc(rtype, rid)
            req.gate.require(rtype, doc)
            current = svc.repo.read(rtype, rid, fire=False, doc=doc)
            base = current.vid  # the patch is written only over the version it was applied to
            try:
                resource = apply_patch(current.resource or {}, (sub.body or {}).get("_patch") or [],
                                       (sub.body or {}).get("_fhirpath_patch"))
            except FhirError as err:
                raise FhirError(err.status, f"{where}: {err.diagnostics}", expression=where) from None
            validate_inside(svc, resource, rtype, where)
            # a patched result goes through the master patient index exactly as a PUT does
            svc.events.fire(StoreEvent("pre-update", rtype, resource, req.write))
            resource.pop("_ehc_existing", None)
        # The change gate (Repository.prepare_version, through the journal) judges every entry, before and after,
        # before anything is applied.
        if_match = parse_etag(sub.header("if-match"), f"Bundle.entry[{i}].request.ifMatch")
        method = {"create": "create", "put": "update", "patch": "update", "delete": "delete"}[plan["kind"]]
        write_index[i] = len(writes)
        writes.append(PlannedWrite(method, rtype, rid, resource, if_match, registration=bool(plan.get("registration")),
                                   base=base))
    return plans, writes, write_index, svc.journal.apply(writes, req.write)
