"""batch and transaction Bundles (FHIR R4 http.html#transaction).

Every entry is read and checked first (app.fhir.bundle_entries), so a malformed Bundle runs nothing. A batch
runs each entry through the router on its own; each entry's failure, expected or not, is that entry's answer.
A transaction is resolved completely first (ids assigned, urn:uuid and conditional references rewritten,
every resource validated, entries in the spec's order DELETE, POST, PUT/PATCH, GET), then written through the
journal, so that it is stored completely or not at all. The answers of one Bundle share a size budget.
"""

from __future__ import annotations

import copy
import logging
from contextlib import ExitStack
from typing import Any

from app.core import fhirjson
from app.core.errors import FhirError, Issue, bad_request, conflict, info_outcome, operation_outcome
from app.core.ids import new_id
from app.fhir.bundle_entries import check_bundle_entries, entry_request, transaction_target
from app.fhir.http import FhirResponse, parse_etag, parse_prefer
from app.fhir.interactions import (
    _audit,
    _find,
    apply_patch,
    check_type,
    criteria_lease,
    criteria_params,
    validate_inside,
)
from app.fhir.outage import abandon_claims
from app.fhir.router import FhirRequest, Router
from app.services import Services
from app.store.database import UNAVAILABLE_ERRORS, DatabaseUnavailable
from app.store.events import StoreEvent
from app.store.journal import PlannedWrite
from app.store.repository import Stored, iter_references

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}

log = logging.getLogger("ehc.fhir")

# What the answers of one Bundle may weigh (their JSON, summed), beside the limit on its entries. A batch of
# small entries can ask for large answers: 100 `GET metadata` entries (5 KB) built a 64 MB answer in memory, and
# searches, histories and $everything do the same with any resource. Refusing `GET metadata` alone would leave
# those; a budget on the answer bounds them all, with no list of costly requests to keep. Once an answer does
# not fit, no further read runs (each answers 413 too-costly: so 1,000 costly GETs cost at most what fits, not
# 1,000 answers); writes still run, since a write's answer is no larger than what the request carried, and
# answer their status, location and etag without the resource. The budget follows the request limit
# (EHC_MAX_BODY_BYTES): a transaction's answer with every resource must fit, with room to spare.
MIN_ANSWER_BYTES = 16 * 1024 * 1024


def answer_budget(svc: Services) -> int:
    return max(MIN_ANSWER_BYTES, 2 * svc.settings.max_body_bytes)


def process_bundle(req: FhirRequest, svc: Services, router: Router) -> FhirResponse:
    bundle = req.body or {}
    if bundle.get("resourceType") != "Bundle":
        raise bad_request("POST to the base URL needs a Bundle of type batch or transaction",
                          expression="resourceType")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise bad_request(f"Bundle.type must be batch or transaction, not {kind!r}", expression="Bundle.type")
    entries = check_bundle_entries(bundle, svc.settings.max_bundle_entries)
    # The Bundle's own elements and its entries' (total, timestamp, an unknown element ...), without the resources
    # each entry carries: those are validated as what they are, once the entry knows what they are for.
    shell = {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in entries]}
    if not entries:
        shell.pop("entry")
    validate_inside(svc, shell, "Bundle", "Bundle")
    subs = [entry_request(req, entry, i) for i, entry in enumerate(entries)]  # every URL and patch, before any runs
    if kind == "batch":
        return _batch(req, svc, router, subs)
    return _transaction(req, svc, router, entries, subs)


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


def _reads_only(sub: FhirRequest) -> bool:
    return sub.method == "GET" or (sub.method == "POST" and sub.path.endswith("_search"))


class _Answers:
    """The answer budget of one Bundle (answer_budget)."""

    def __init__(self, svc: Services) -> None:
        self.left = answer_budget(svc)
        self.database_down = False  # an entry found the database unreachable: the later ones are not attempted

    def skip(self, sub: FhirRequest, i: int) -> dict[str, Any] | None:
        """The answer of an entry that is not run: a read once the budget is spent, anything once the database
        is down. None: run it."""
        if self.database_down:
            outcome = DatabaseUnavailable(f"Bundle.entry[{i}] was not attempted: the database is unavailable; "
                                          "retry shortly").outcome()
            return {"response": {"status": "503", "outcome": outcome}}
        if self.left <= 0 and _reads_only(sub):
            return self._too_costly(i)
        return None

    def run(self, router: Router, svc: Services, sub: FhirRequest, i: int) -> dict[str, Any]:
        """The answer entry of a read or batch entry: run it unless skipped, and fit its answer in the budget."""
        skipped = self.skip(sub, i)
        if skipped is not None:
            return skipped
        return self.fit(_response_entry(_run_entry(router, sub, svc, i, self)), sub, i)

    def fit(self, item: dict[str, Any], sub: FhirRequest | None, i: int) -> dict[str, Any]:
        size = len(fhirjson.dumps(item))
        if size <= self.left:
            self.left -= size
            return item
        self.left = 0  # the first answer that does not fit ends the reads of this Bundle
        if sub is not None and _reads_only(sub):
            return self._too_costly(i)
        kept: dict[str, Any] = {k: v for k, v in item.items() if k in ("fullUrl",)}
        kept["response"] = {k: v for k, v in item["response"].items() if k != "outcome"}
        kept["response"]["outcome"] = operation_outcome([Issue(
            f"Bundle.entry[{i}] was done, but the answer of this Bundle has reached its size limit: the "
            "entry's resource is left out (read it with its own request)", "too-costly", "warning",
            [f"Bundle.entry[{i}]"])])
        return kept

    @staticmethod
    def _too_costly(i: int) -> dict[str, Any]:
        outcome = FhirError(413, f"Bundle.entry[{i}] was not answered: the answer of this Bundle has reached its "
                                 "size limit; send this read in another request", code="too-costly",
                            expression=f"Bundle.entry[{i}]").outcome()
        return {"response": {"status": "413", "outcome": outcome}}


def _run_entry(router: Router, sub: FhirRequest, svc: Services, i: int, answers: _Answers) -> FhirResponse:
    """One entry's answer, whatever it raises: a failure is that entry's outcome, never the whole Bundle's (the
    entries before it may have been stored, and their answers must reach the client)."""
    try:
        return router.dispatch(sub, svc)
    except FhirError as err:
        if isinstance(err, DatabaseUnavailable):
            answers.database_down = True
        return FhirResponse(err.status, err.outcome())
    except UNAVAILABLE_ERRORS:
        log.warning("database unavailable on Bundle.entry[%d] (%s %s)", i, sub.method, sub.path)
        abandon_claims(svc)
        answers.database_down = True
        return FhirResponse(503, DatabaseUnavailable().outcome())
    except Exception:
        log.exception("unhandled error on Bundle.entry[%d] (%s %s)", i, sub.method, sub.path)
        abandon_claims(svc)  # the entry's write failed half way: release the history slots it claimed
        return FhirResponse(500, FhirError(500, f"Bundle.entry[{i}]: internal error; the server log has the "
                                                "details", expression=f"Bundle.entry[{i}]").outcome())


def _batch(req: FhirRequest, svc: Services, router: Router, subs: list[FhirRequest]) -> FhirResponse:
    answers = _Answers(svc)
    out = [answers.run(router, svc, sub, i) for i, sub in enumerate(subs)]  # in order: the budget is spent in order
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


def _conditional_refs(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Each conditional reference ("Patient?identifier=...") of the entries' resources -> where it first occurs."""
    found: dict[str, str] = {}
    for i, entry in enumerate(entries):
        for path, ref in iter_references(entry.get("resource"), f"Bundle.entry[{i}].resource", contained=True):
            if "?" in ref and "://" not in ref:
                found.setdefault(ref, path)
    return found


def _creating_criteria(subs: list[FhirRequest]) -> dict[int, str]:
    """Entry -> the criteria lease of each entry that creates a resource when nothing matches (ifNoneExist, a
    conditional PUT): the same leases as the single interactions take, so that a transaction and a concurrent
    request (or transaction) with the same criteria do not both create."""
    names = {}
    for i, sub in enumerate(subs):
        rtype = sub.path.split("/")[0]
        if sub.method == "POST" and sub.header("if-none-exist"):
            names[i] = criteria_lease(rtype, _criteria(sub.header("if-none-exist") or "",
                                                       f"Bundle.entry[{i}].request.ifNoneExist"))
        elif sub.method == "PUT" and "/" not in sub.path and sub.params:
            names[i] = criteria_lease(rtype, sub.params)
    return names


def _criteria(text: str, where: str) -> list[tuple[str, str]]:
    """The search parameters of conditional criteria (interactions.criteria_params), a refusal naming `where`."""
    try:
        return criteria_params(text)
    except FhirError as err:
        raise _naming(err, where) from None


def _naming(err: FhirError, where: str) -> FhirError:
    """`err`, about the criteria found at `where` in the Bundle: the same status and text, naming `where`."""
    issue = err.issues[0]
    return FhirError(err.status, f"{where}: {issue.diagnostics}", code=issue.code, expression=where)


def _check_fullurls(entries: list[dict[str, Any]]) -> None:
    """A fullUrl names one entry (references to it are rewritten to that entry's resource): a second entry with
    the same fullUrl is refused, naming it, rather than binding the references to whichever came last."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        full_url = entry.get("fullUrl")
        if not full_url:
            continue
        if full_url in seen:
            raise bad_request(f"Bundle.entry[{i}].fullUrl {full_url!r} is Bundle.entry[{seen[full_url]}].fullUrl "
                              "too: a fullUrl identifies one entry", expression=f"Bundle.entry[{i}].fullUrl")
        seen[full_url] = i


def _transaction(req: FhirRequest, svc: Services, router: Router, entries: list[dict[str, Any]],
                 subs: list[FhirRequest]) -> FhirResponse:
    for i, (entry, sub) in enumerate(zip(entries, subs, strict=True)):
        transaction_target(sub, entry, i)
    _check_fullurls(entries)
    leases = _creating_criteria(subs)
    progress: dict[str, Any] = {"entry": None, "applying": False}
    with ExitStack() as held:
        # Held from the searches to the writes; taken in one order, so two transactions sharing criteria
        # cannot each hold one and wait for the other.
        for name in sorted(set(leases.values())):
            held.enter_context(svc.leases.hold(name))
        try:
            plans, writes, write_index, results = _plan_and_apply(req, svc, entries, subs, leases, progress)
        except FhirError:
            raise
        except Exception as err:
            if isinstance(err, UNAVAILABLE_ERRORS):  # the database is down: 503 at the web edge (app.fhir.outage)
                raise
            # Not a refusal but a fault (a bug, an unexpected input): the transaction fails as for any refusal.
            # Nothing is stored while planning; the journal undoes what it had applied.
            log.exception("unhandled error in a transaction (Bundle.entry[%s])", progress["entry"])
            abandon_claims(svc)
            where = f"Bundle.entry[{progress['entry']}]" if progress["entry"] is not None else "Bundle"
            state = "the journal undoes what was applied" if progress["applying"] else "nothing was stored"
            raise FhirError(500, f"{where}: internal error, so the transaction failed ({state}); the server "
                                 "log has the details", expression=where) from None
    # 4. The response, in the order of the request (Prefer: return=minimal | representation | OperationOutcome).
    prefer = parse_prefer(req.header("prefer")).get("return", "representation")
    answers = _Answers(svc)
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        plan = plans.get(i)
        method = entry["request"]["method"]
        if method == "GET":
            # GET entries are not planned: their request is as parsed. They run after the writes are stored, so
            # a failure (or the answer budget) is that entry's answer: the others' must still reach the client.
            out.append(answers.run(router, svc, subs[i], i))
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
        out.append(answers.fit(item, None, i))
    _audit(svc, req, "transaction", None, [f"{w.resource_type}/{w.id}" for w in writes])
    return FhirResponse(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": out})


def _plan_and_apply(req: FhirRequest, svc: Services, entries: list[dict[str, Any]], subs: list[FhirRequest],
                    leases: dict[int, str], progress: dict[str, Any]
                    ) -> tuple[dict[int, dict[str, Any]], list[PlannedWrite], dict[int, int], list[Stored | None]]:
    """Steps 1-3 of a transaction, then the journal: the plan of each entry, the writes and the stored results.
    `leases`: the criteria lease of each entry that may create (_creating_criteria). `progress` says which entry
    is being planned, and whether the journal is applying the writes (for the answer to an unexpected fault)."""
    order = sorted(range(len(entries)), key=lambda i: ORDER[entries[i]["request"]["method"]])
    mapping: dict[str, str] = {}
    plans: dict[int, dict[str, Any]] = {}
    written: dict[tuple[str, str], int] = {}  # (type, id) -> the entry that writes it
    creating: dict[str, int] = {}  # the criteria (lease name) of a conditional write that creates -> its entry
    # 1. Decide every entry's target id, so references between entries can be rewritten.
    for i in order:
        progress["entry"] = i
        entry = entries[i]
        sub = subs[i]
        method = sub.method
        segments = sub.path.split("/")  # its shape is checked (transaction_target)
        rtype = segments[0]
        where = f"Bundle.entry[{i}]"
        if method == "GET":
            continue
        check_type(svc, rtype, {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method])
        if method == "POST":
            existing = None
            if sub.header("if-none-exist"):
                criteria = _criteria(sub.header("if-none-exist") or "", f"{where}.request.ifNoneExist")
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
            else:  # [type]?criteria (transaction_target refused [type] alone)
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
                body_id = (entry.get("resource") or {}).get("id")
                if matches and method == "PUT" and body_id not in (None, matches[0]["_id"]):
                    raise bad_request(f"{where}.resource.id {body_id!r} differs from the {rtype} the conditional "
                                      "URL matches", expression=f"{where}.resource.id")
                if not matches and method == "PUT" and body_id and svc.repo.exists(rtype, body_id):
                    # as PUT [type]?criteria answers (interactions.update, create_only): the resource that has
                    # the body's id did not match the criteria, so it is not the one to overwrite
                    raise conflict(f"{where}: no {rtype} matches the conditional URL, and {rtype}/{body_id}, the "
                                   "id the resource names, exists already", expression=f"{where}.resource.id")
                rid = matches[0]["_id"] if matches else body_id or new_id()
            plans[i] = {"kind": method.lower(), "type": rtype, "id": rid, "sub": sub}
        if plans[i]["kind"] != "noop":  # http.html#trules: a resource may appear in a transaction once
            target = (rtype, plans[i]["id"])
            if target in written:
                raise bad_request(f"{where} writes {rtype}/{target[1]}, as Bundle.entry[{written[target]}] does: a "
                                  "resource may appear in a transaction once", expression=where)
            written[target] = i
        if entry.get("fullUrl"):
            mapping[entry["fullUrl"]] = f"{rtype}/{plans[i]['id']}"
    progress["entry"] = None
    # 2. Conditional references ("Patient?identifier=...") resolve to exactly one resource, through the same
    # criteria reading and search as every conditional interaction (criteria_params, _find): criteria that
    # select nothing are refused there, named here by where the reference is.
    for ref, path in _conditional_refs(entries).items():
        rtype, query = ref.split("?", 1)
        criteria = _criteria(query, path)
        try:
            matches = _find(req, svc, rtype, criteria, limit=2)
        except FhirError as err:
            if err.status != 400:
                raise
            raise _naming(err, path) from None
        if len(matches) != 1:
            raise FhirError(412, f"{path}: the conditional reference {ref!r} matches {len(matches)} resources, "
                                 "not one", expression=path)
        mapping[ref] = f"{rtype}/{matches[0]['_id']}"
    # 3. Build the writes: validated, references rewritten.
    writes: list[PlannedWrite] = []
    write_index: dict[int, int] = {}
    for i in order:
        progress["entry"] = i
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
            _check_local_refs(resource, where)
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
    progress["entry"] = None
    progress["applying"] = True
    return plans, writes, write_index, svc.journal.apply(writes, req.write)


def _check_local_refs(resource: dict[str, Any], where: str) -> None:
    """A urn:uuid reference names an entry of the transaction (its fullUrl), and was rewritten to that entry's
    resource: one left names no entry, and would be stored as a reference nothing can resolve (400 naming it).
    A Bundle stored by the transaction is left alone: its own entries define its urn:uuid references."""
    if resource.get("resourceType") == "Bundle":
        return
    for path, ref in iter_references(resource, where, contained=True):
        if ref.startswith("urn:uuid:"):
            raise bad_request(f"{path}: {ref!r} is the fullUrl of no entry of this transaction",
                              expression=path)
