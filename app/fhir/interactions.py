"""Instance and type interactions: create, read, vread, update, patch, delete and their conditional forms
(FHIR R4 http.html). Search and history live in searching.py."""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

import jsonpatch

from app.core import fhirjson
from app.core.access import AccessRecord, Change
from app.core.errors import FhirError, Issue, bad_request, conflict, info_outcome, not_found, precondition_failed
from app.core.ids import is_valid_id
from app.core.timeutil import naive_utc
from app.fhir.fhirpath_patch import apply_fhirpath_patch
from app.fhir.http import (
    FHIR_MEDIA,
    FhirResponse,
    accepts,
    etag,
    most_wanted,
    parse_etag,
    parse_prefer,
    version_headers,
)
from app.fhir.presentation import as_asked
from app.fhir.router import FhirRequest
from app.fhir.validation import Validator
from app.search.parser import parse_search
from app.services import Services
from app.store.protect import redact_query
from app.store.repository import MAX_WRITE_RETRIES, Stored


def check_type(svc: Services, rtype: str, interaction: str) -> None:
    conf = svc.resource_types.get(rtype)
    if conf is None:
        raise not_found(f"resource type {rtype!r} is not supported by this server")
    if interaction not in conf["interactions"]:
        raise FhirError(405, f"{interaction} is not allowed on {rtype}", code="not-supported")


def validator(svc: Services) -> Validator:
    v = svc.extensions.get("validator")
    if v is None:
        v = svc.extensions["validator"] = Validator(svc.profiles_dir)
    return v


def validate_inside(svc: Services, resource: dict[str, Any], rtype: str, where: str) -> None:
    """Validate a resource carried inside another (a Bundle entry, a parameter): 400 with every issue, each named
    from the outer resource (`Bundle.entry[2].resource.gender`)."""
    issues = validator(svc).issues(resource, rtype)
    if issues:
        fixed = [Issue(f"{where}: {i.diagnostics}", i.code, i.severity,
                       [e.replace(rtype, where, 1) for e in i.expression]) for i in issues]
        raise FhirError(400, fixed[0].diagnostics, issues=fixed)


def resource_response(req: FhirRequest, stored: Stored, status: int = 200,
                      with_location: bool = False) -> FhirResponse:
    if req.gate is not None:  # the disclosure gate judges the body; it need not look up where the record lives
        req.gate.remember(stored.resource_type, stored.id, stored.province)
    headers = version_headers(req.base, stored.resource_type, stored.id, stored.vid, stored.ts)
    if not with_location:
        headers.pop("Location")
    # Prefer: return= is about what a create, update or patch answers (http.html#ops); a read answers the resource.
    pref = _prefer_return(req) if req.method in ("POST", "PUT", "PATCH") else "representation"
    if pref == "minimal":
        return FhirResponse(status, None, {**headers, "Preference-Applied": "return=minimal"})
    if pref == "operationoutcome":
        return FhirResponse(status, info_outcome(f"{stored.resource_type}/{stored.id} version {stored.vid}"),
                            {**headers, "Preference-Applied": "return=OperationOutcome"})
    body = stored.resource
    if body is not None and req.method == "GET":
        body = as_asked(body, req.param("_summary"), req.param("_elements"))
    return FhirResponse(status, body, headers)


def not_modified_since(header: str | None, ts: datetime) -> bool:
    """If-Modified-Since (RFC 9110 §13.1.3): true when the version is not newer than the date given."""
    if not header:
        return False
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False  # an invalid date is ignored, as the RFC says
    since = naive_utc(since)
    return ts.replace(microsecond=0) <= since


def none_match_fails(header: str, vid: int | None) -> bool:
    """If-None-Match (RFC 9110 §13.1.2) is false when it is `*` and the resource exists (vid not None), or when
    one of the entity tags it lists is the current version's (weak comparison: W/"2" and "2" are the same)."""
    tags = [t.strip() for t in header.split(",") if t.strip()]
    if vid is None:
        return False
    if "*" in tags:
        return True
    return any((t[2:] if t.startswith("W/") else t).strip('"') == str(vid) for t in tags)


def _prefer_return(req: FhirRequest) -> str:
    return parse_prefer(req.header("prefer")).get("return", "representation")


def _body(req: FhirRequest, rtype: str, rid: str | None = None) -> dict[str, Any]:
    if req.body is None:
        raise bad_request("the request has no body; a FHIR resource was expected")
    body = req.body
    if body.get("resourceType") != rtype:
        raise bad_request(f"resourceType must be {rtype!r}, got {body.get('resourceType')!r}",
                          expression="resourceType")
    if rid is not None:
        if body.get("id") is None:
            raise bad_request("the resource has no id; an update must carry the id of its URL", expression="id")
        if body.get("id") != rid:
            raise bad_request(f"the resource id {body.get('id')!r} differs from the URL id {rid!r}",
                              expression="id")
    return body


def _validated(svc: Services, req: FhirRequest, rtype: str, rid: str | None = None) -> dict[str, Any]:
    body = _body(req, rtype, rid)
    validator(svc).validate(body, rtype)
    return body


def _audit(svc: Services, req: FhirRequest, interaction: str, rtype: str | None, ids: list[str],
           consent: str | None = None, status: int = 200, withheld: int = 0, patients: list[str] | None = None
           ) -> None:
    """Say what the request did; the router completes the record with what the disclosure gate let out."""
    query = redact_query(svc.repo.protector, req.query_string() or None)
    req.audit(AccessRecord(interaction, rtype, ids, "0", status, req.principal, query, patient_ids=patients or [],
                           consent=consent, remote_addr=req.remote_addr, withheld=withheld))


# -- create ---------------------------------------------------------------------------------------------

def create(req: FhirRequest, svc: Services, type: str) -> FhirResponse:
    body = _to_create(req, svc, type)
    criteria = req.header("if-none-exist")
    if criteria:
        return _conditional_create(req, svc, type, body, criteria)
    return _do_create(req, svc, type, body)


def _to_create(req: FhirRequest, svc: Services, type: str) -> dict[str, Any]:
    """The body of a create, validated, without the id the server assigns; the caller may create the type."""
    check_type(svc, type, "create")
    body = _validated(svc, req, type)
    body = {k: v for k, v in body.items() if k != "id"}
    svc.policy.require(req.principal, "create", type)
    return body


def _do_create(req: FhirRequest, svc: Services, type: str, body: dict[str, Any]) -> FhirResponse:
    stored = svc.repo.create(type, body, req.write)
    created = stored.vid == 1 and not stored.unchanged
    _audit(svc, req, "create" if created else "update", type, [stored.id])
    # A create the master index turned into an update of the resident's record answers 200 (the registration
    # view when the caller may not see the whole record: the disclosure gate decides).
    resp = resource_response(req, stored, 201 if created else 200, with_location=True)
    if not created:
        resp.registration_of = body
    return resp


def _conditional_create(req: FhirRequest, svc: Services, type: str, body: dict[str, Any],
                        criteria: str) -> FhirResponse:
    params = criteria_params(criteria)
    with svc.leases.hold(criteria_lease(type, params)):
        matches = _find(req, svc, type, params, limit=2, where="If-None-Exist")
        if len(matches) > 1:
            raise precondition_failed(f"If-None-Exist {criteria!r} matches more than one {type}")
        if matches:
            stored = Stored.from_doc(type, matches[0])
            req.gate.require(type, matches[0])  # the match leaves only if the caller may see it
            _audit(svc, req, "read", type, [stored.id])
            return resource_response(req, stored, 200, with_location=True)
        return _do_create(req, svc, type, body)


def criteria_lease(rtype: str, params: list[tuple[str, str]]) -> str:
    """The name of the lease that serialises the writes which create a resource when nothing matches their
    criteria (a conditional create, a conditional update, their transaction entries), across processes: of two
    that find no match, the second waits, then finds the first one's resource instead of creating its twin."""
    return "cc|" + rtype + "|" + hashlib.sha256(repr(sorted(params)).encode()).hexdigest()


def criteria_params(criteria: str) -> list[tuple[str, str]]:
    query = criteria.split("?", 1)[1] if "?" in criteria else criteria
    params = parse_qsl(query, keep_blank_values=True)
    if not params:
        raise bad_request("conditional criteria must not be empty", expression="If-None-Exist")
    return params


def refuse_unsupported(params: list[tuple[str, str]]) -> None:
    """400 for the search parameters the server parses but does not apply: `_offset` (paging is by cursor:
    follow the `next` link). `_offset=0` asks for what every first page is, and is accepted."""
    for name, value in params:
        if name == "_offset" and value.strip() != "0":
            raise bad_request("_offset is not supported: page with the bundle's next link (_cursor)",
                              expression="_offset", code="not-supported")


def _find(req: FhirRequest, svc: Services, rtype: str, params: list[tuple[str, str]],
          limit: int, where: str | None = None) -> list[dict[str, Any]]:
    """The matches of a conditional interaction's criteria: the caller's own search (its scopes' constraints,
    a resident's compartment), so that what it matches tells nothing its search would not. Each match is then
    judged by the disclosure or the change gate as usual.

    The criteria must select (http.html#cond-update: a conditional interaction acts on what its search criteria
    match): criteria whose parameters all have empty values (`status=`), or that hold only parameters about the
    result (`_count`, `_sort`, `_summary`, `_format` ...), would match every resource of the type, so they are
    refused with 400 before anything is searched. Every conditional interaction (create, update, patch, delete,
    their transaction entries and a transaction's conditional references) finds its matches here. `where` names
    the criteria in the error (`If-None-Exist`)."""
    restricted = svc.policy.restrict_search(req.principal, rtype, params)  # scopes are judged first
    refuse_unsupported(params)
    own = parse_search(rtype, params, svc.registry, strict=True, default_count=limit,
                       max_count=svc.settings.max_count)
    if not own.filters:
        shown = "&".join(f"{k}={v}" for k, v in params)
        what = f"the conditional criteria {shown!r}" if shown else "empty conditional criteria"
        raise bad_request(f"{what} select no {rtype}: they have no search parameter "
                          "with a value (empty values and parameters such as _count, _sort or _summary do not "
                          f"select), so they would match every {rtype}", expression=where)
    request = parse_search(rtype, restricted, svc.registry, strict=True, default_count=limit,
                           max_count=svc.settings.max_count)
    # Only matches the caller may see count: one it may not would answer, by a 412 or a 403 instead of a create,
    # the criteria about a record it may not read (whether the resident has a B20 Condition).
    return svc.searcher.search(request, limit, admit=req.gate.row_admit(rtype), admit_of=req.gate.row_admit).docs


# -- read -----------------------------------------------------------------------------------------------

def read(req: FhirRequest, svc: Services, type: str, id: str) -> FhirResponse:
    check_type(svc, type, "read")
    svc.policy.require(req.principal, "read", type)
    doc = svc.repo.get_doc(type, id)
    consent = req.gate.require(type, doc)  # also before 304 and 410, which carry no body
    stored = svc.repo.read(type, id, req.write, doc=doc)
    inm = req.header("if-none-match")
    if (inm and none_match_fails(inm, stored.vid)) or (
            not inm and not_modified_since(req.header("if-modified-since"), stored.ts)):
        _audit(svc, req, "read", type, [id], consent, 304)
        return FhirResponse(304, None, {"ETag": etag(stored.vid)})
    _audit(svc, req, "read", type, [id], consent)
    return as_native(req, resource_response(req, stored))


def as_native(req: FhirRequest, resp: FhirResponse) -> FhirResponse:
    """A Binary asked for in its own content type (Accept): its bytes. The body stays on the response, so the
    disclosure gate judges the resource before the bytes leave."""
    res = resp.body
    accept = req.header("accept")
    if (resp.status != 200 or not isinstance(res, dict) or res.get("resourceType") != "Binary"
            or most_wanted(accept) in FHIR_MEDIA or req.param("_format")):
        return resp
    ctype = str(res.get("contentType") or "application/octet-stream")
    if not accepts(accept, ctype):
        raise FhirError(406, f"Binary/{res.get('id')} is {ctype}, not {accept}", code="not-supported")
    try:
        resp.raw = base64.b64decode(res.get("data") or "")
    except (binascii.Error, ValueError):
        # Stored before base64Binary was checked (RFC 4648): the bytes cannot be given, the resource can.
        raise FhirError(406, f"Binary/{res.get('id')}.data is not valid base64, so its content cannot be "
                        f"served as {ctype}; read it as a FHIR resource (Accept: application/fhir+json)",
                        code="not-supported") from None
    resp.content_type = ctype
    return resp


def vread(req: FhirRequest, svc: Services, type: str, id: str, vid: str) -> FhirResponse:
    check_type(svc, type, "vread")
    svc.policy.require(req.principal, "read", type)
    current = svc.repo.get_doc(type, id)
    req.gate.require(type, current)
    if not (vid.isascii() and vid.isdigit()):  # a version id is ASCII digits ("²".isdigit() is true, int() fails)
        raise not_found(f"version {vid!r} of {type}/{id} is not known")
    stored = svc.repo.vread(type, id, vid, current=current)  # the current version is not read twice
    _audit(svc, req, "vread", type, [id])
    return as_native(req, resource_response(req, stored))


# -- update ---------------------------------------------------------------------------------------------

def update(req: FhirRequest, svc: Services, type: str, id: str, create_only: bool = False) -> FhirResponse:
    """PUT [type]/[id]; `create_only`: an update as create, which must not write over a resource that exists."""
    check_type(svc, type, "update")
    if not is_valid_id(id):
        raise bad_request(f"{id!r} is not a valid FHIR id", expression="id")
    body = _validated(svc, req, type, id)
    prior = svc.repo.get_raw(type, id)
    svc.policy.require(req.principal, "update" if prior else "create", type)
    if create_only and prior and not prior.get("del"):
        # A conditional update that matched nothing creates with the body's id (http.html#cond-update); the
        # resource that already has that id did not match the criteria, so it is not the one to overwrite.
        raise conflict(f"no {type} matches the criteria, and {type}/{id}, the id the resource names, exists "
                       "already: nothing was written", expression="id")
    if_match = parse_etag(req.header("if-match"), "If-Match")
    inm = req.header("if-none-match")
    if inm and none_match_fails(inm, None if not prior or prior.get("del") else int(prior["vid"])):
        # If-None-Match: * asks to create only (RFC 9110 §13.1.2): a current version exists, so nothing is written
        raise precondition_failed(f"If-None-Match {inm!r}: {type}/{id} already exists; nothing was written")
    # A body equal to the current version (meta.versionId and lastUpdated aside) makes no new version: 200 with
    # the current one (as HAPI answers); If-Match and the change gate still judge it, and it is audited as any.
    stored = svc.repo.update(type, id, body, if_match=if_match, context=req.write, known_prior=prior,
                             keep_unchanged=True)
    created = stored.vid == 1 and not stored.unchanged
    _audit(svc, req, "create" if created else "update", type, [id])
    return resource_response(req, stored, 201 if created else 200, with_location=True)


def conditional_update(req: FhirRequest, svc: Services, type: str) -> FhirResponse:
    check_type(svc, type, "update")
    if not req.params:
        raise bad_request("a conditional update needs search criteria in the URL")
    body = _body(req, type)
    with svc.leases.hold(criteria_lease(type, req.params)):
        match = _at_most_one(req, svc, type)
        if match is None:
            if body.get("id"):
                return update(req, svc, type, body["id"], create_only=True)
            # not create(): an If-None-Exist sent along would wait for the lease this request holds
            return _do_create(req, svc, type, _to_create(req, svc, type))
        rid = match["_id"]
        if body.get("id") not in (None, rid):
            raise bad_request(f"the resource id {body['id']!r} differs from the matched {type}/{rid}",
                              expression="id")
        req.body = {**body, "id": rid}
        return update(req, svc, type, rid)


# -- patch ----------------------------------------------------------------------------------------------

def patch(req: FhirRequest, svc: Services, type: str, id: str) -> FhirResponse:
    """JSON Patch (application/json-patch+json) or FHIRPath Patch (a Parameters resource), judged on the result."""
    check_type(svc, type, "patch")
    body = req.body if isinstance(req.body, dict) else {}
    ops, fhirpath = body.get("_patch"), body.get("_fhirpath_patch")
    if "_patch" in body:  # the media type says JSON Patch: a body that is not one is malformed (400), not 415
        _check_json_patch(ops)
    if not isinstance(ops, list) and not isinstance(fhirpath, dict):
        raise FhirError(415, "PATCH needs a JSON Patch (application/json-patch+json) or a FHIRPath Patch "
                             "(a Parameters resource, application/fhir+json)")
    svc.policy.require(req.principal, "patch", type)
    if_match = parse_etag(req.header("if-match"), "If-Match")
    for _ in range(MAX_WRITE_RETRIES):
        doc = svc.repo.get_doc(type, id)
        req.gate.require(type, doc)  # nothing of a record the caller may not see shows in a patch error
        stored = svc.repo.read(type, id, fire=False, doc=doc)
        patched = apply_patch(stored.resource or {}, ops, fhirpath)
        if patched.get("resourceType") != type or patched.get("id") != id:
            raise FhirError(422, "a patch may not change resourceType or id", code="business-rule",
                            expression=["resourceType", "id"])
        validator(svc).validate(patched, type)
        try:
            # Written only over the version it was applied to, so that no concurrent write is lost. A patch that
            # changes nothing (`[]`, a test, a value replaced by itself) makes no new version: the current one.
            new = svc.repo.update(type, id, patched, if_match=if_match if if_match is not None else stored.vid,
                                  context=req.write, keep_unchanged=True)
        except FhirError as err:
            if err.status != 412 or if_match is not None:
                raise
            continue  # another write came first and the client named no version: patch the version it made
        _audit(svc, req, "patch", type, [id])
        resp = resource_response(req, new, 200, with_location=True)
        resp.headers["Content-Location"] = resp.headers["Location"]
        return resp
    raise conflict(f"{type}/{id} is being changed by many requests at once; retry")


def conditional_patch(req: FhirRequest, svc: Services, type: str) -> FhirResponse:
    """PATCH [type]?[criteria]: the patch of the one match (404 for none, 412 for several)."""
    check_type(svc, type, "patch")
    if not req.params:
        raise bad_request("a conditional patch needs search criteria in the URL")
    match = _at_most_one(req, svc, type)
    if match is None:
        raise not_found(f"no {type} matches the criteria of the conditional patch")
    return patch(req, svc, type, match["_id"])


def _at_most_one(req: FhirRequest, svc: Services, type: str) -> dict[str, Any] | None:
    """The one match of the URL's criteria (conditional update and patch), None for none, 412 for several."""
    matches = _find(req, svc, type, req.params, limit=2)
    if len(matches) > 1:
        raise precondition_failed(f"the criteria match {len(matches)} or more {type} resources")
    return matches[0] if matches else None


def apply_patch(resource: dict[str, Any], ops: Any, fhirpath: Any) -> dict[str, Any]:
    """The patched resource (400 malformed, 422 a JSON Patch test that fails or a path that is not there). `ops`
    is an array, as the edges checked it (patch(), a transaction entry's Binary)."""
    if isinstance(fhirpath, dict):
        return apply_fhirpath_patch(resource, fhirpath)
    try:
        patched: Any = jsonpatch.apply_patch(resource, ops)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        code = 422 if isinstance(err, jsonpatch.JsonPatchTestFailed) else 400
        raise FhirError(code, f"the JSON Patch cannot be applied: {err}", code="processing") from None
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as err:
        raise bad_request(f"the JSON Patch is malformed: {err}") from None
    if not isinstance(patched, dict):  # an operation on the root ("path": "") replaced the resource by a non-object
        raise FhirError(422, f"the result of the JSON Patch is {fhirjson.kind_of(patched)}, not a resource",
                        code="processing")
    return patched


def _check_json_patch(ops: Any) -> None:
    if not isinstance(ops, list):
        raise bad_request(f"the PATCH body must be a JSON Patch, an array of operations (RFC 6902 §3), not "
                          f"{fhirjson.kind_of(ops)}")


# -- delete ---------------------------------------------------------------------------------------------

def delete(req: FhirRequest, svc: Services, type: str, id: str) -> FhirResponse:
    check_type(svc, type, "delete")
    svc.policy.require(req.principal, "delete", type)
    if_match = parse_etag(req.header("if-match"), "If-Match")
    cascade = req.param("_cascade") == "delete"
    stored = svc.repo.delete(type, id, if_match=if_match, context=req.write, cascade=cascade)
    _audit(svc, req, "delete", type, [id])
    headers = {"ETag": etag(stored.vid)} if stored else {}
    if stored is None:
        return FhirResponse(200, info_outcome(f"{type}/{id} did not exist or was already deleted"), headers)
    return FhirResponse(200, info_outcome(f"{type}/{id} deleted (version {stored.vid})"), headers)


def conditional_delete(req: FhirRequest, svc: Services, type: str) -> FhirResponse:
    check_type(svc, type, "delete")
    if not req.params:
        raise bad_request("a conditional delete needs search criteria in the URL")
    params = [(k, v) for k, v in req.params if k != "_cascade"]
    matches = _find(req, svc, type, params, limit=svc.settings.max_count + 1)
    if len(matches) > 1 and req.header("x-delete-multiple") != "true":
        raise precondition_failed(f"the criteria match {len(matches)} {type} resources; "
                                  "a conditional delete removes at most one")
    issues = []
    svc.policy.require(req.principal, "delete", type)
    for doc in matches:  # every match passes the change gate before any is deleted
        svc.repo.admit(req.write, Change(type, doc.get("res"), None, doc.get("prov")))
    for doc in matches:
        svc.repo.delete(type, doc["_id"], context=req.write, cascade=req.param("_cascade") == "delete")
        issues.append(Issue(f"{type}/{doc['_id']} deleted", "informational", "information"))
    _audit(svc, req, "delete", type, [d["_id"] for d in matches])
    if not issues:
        return FhirResponse(200, info_outcome(f"no {type} matched; nothing deleted"))
    return FhirResponse(200, {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]})
