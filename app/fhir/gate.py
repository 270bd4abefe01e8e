"""The disclosure gate: every resource that leaves the server passes here, whatever form it leaves in.

One gate per request (Router.dispatch makes it and hands every handler's response to `release`, so a new route
cannot forget it). It asks the policy (`AccessPolicy.disclose`) about each resource version in the response body:
- a single resource (read, vread, write responses, the match of If-None-Exist): refused → 403, or for a
  registration of a known resident by a client that may not see the record, the registration view (what the
  caller submitted, plus the id and the card identifier it needs);
- Bundle entries of every kind (searchset, history, $everything, batch and transaction responses): a refused
  entry is left out and counted (searchset: an `outcome` entry says how many, never which);
- Parameters parts that carry resources ($operation outputs);
- OperationOutcome texts: `Type/id` of a record the caller may not see is replaced by `Type/(withheld)`.
Handlers that page or count (search, history, $everything) ask the same gate per row *before* paging
(`decide`), so that counts, totals and cursors are made of disclosed rows only; `release` re-checks what they
return. Decisions are memoised per resource version for the request.

The gate also gathers what the request disclosed (entities, their patients, consents relied on, withheld count,
break-the-glass) for the request's one AuditEvent, which the router writes (`audit_record`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from app.audit.events import MAX_ENTITIES, as_seen_by
from app.core.access import ALLOW, REVIEW_NOTE, AccessRecord, Change, Decision
from app.core.errors import FhirError, Issue, forbidden
from app.fhir.http import FhirResponse
from app.fhir.presentation import outcome_entry
from app.search.compile import compile_filter
from app.search.matcher import resource_matches
from app.search.request import SearchRequest
from app.services import Services

CONTAINERS = {"Bundle", "Parameters", "OperationOutcome"}
_MENTION = re.compile(r"\b([A-Z][A-Za-z]{1,40})/([A-Za-z0-9\-.]{1,64})\b")
CARD_SYSTEM = "urn:oid:2.16.156.10011.1.19"
FOCUS_PARAMS = {"patient", "subject", "_id", "beneficiary"}


class DisclosureGate:
    def __init__(self, svc: Services, req: Any) -> None:
        self.svc = svc
        self.req = req
        self.principal = req.principal
        self.judging = svc.policy.judges_rows(req.principal, None)
        self._memo: dict[tuple[str, str, str, str], Decision] = {}
        self._provinces: dict[tuple[str, str], str | None] = {}
        self.disclosed: list[str] = []
        self.patients: set[str] = set()
        self.refused_patients: set[str] = set()
        # Whose rows a search judged, shown or not: a search that found a resident's records (withheld, or only
        # counted) concerned them, and is in their trail (at most MAX_ENTITIES of them an event).
        self.judged_patients: set[str] = set()
        self.consents: list[str] = []
        self.withheld = 0
        self.break_glass = False

    # -- deciding -------------------------------------------------------------------------------------------

    def decide(self, rtype: str, doc: dict[str, Any], letters: str = "rs") -> Decision:
        """The decision for a stored (decoded) document {_id, vid, prov, res}, remembered for release."""
        res = doc.get("res")
        if res is None:
            return Decision(False, "deleted")
        self._provinces[(rtype, str(doc.get("_id")))] = doc.get("prov")
        return self.judge(rtype, res, doc.get("prov"), letters)

    def visible_or_none(self, rtype: str, doc: dict[str, Any] | None, operation: str,
                        status: int) -> dict[str, Any] | None:
        """`doc` when the caller may see it, else None, for an operation that answers an unknown record and a
        withheld one alike (`$ihe-pix`, `$merge` by identifier): the difference would tell whether the record
        exists. A withheld one is recorded as a refusal (`status`) in the patient's trail."""
        if doc is None:
            return None
        decision = self.decide(rtype, doc)
        if decision.allowed:
            return doc
        self.req.audit(AccessRecord("refused", rtype, [], "4", status, self.principal, operation, decision.reason,
                                    patient_ids=sorted(decision.patients), remote_addr=self.req.remote_addr))
        return None

    def admits(self, rtype: str, doc: dict[str, Any]) -> bool:
        decision = self.decide(rtype, doc)
        if len(self.judged_patients) < MAX_ENTITIES:
            self.judged_patients |= decision.patients
        return decision.allowed

    def row_admit(self, rtype: str, sub: SearchRequest | None = None, criteria: SearchRequest | None = None
                  ) -> Callable[[dict[str, Any]], bool] | None:
        """Which stored rows of a type a search may use, judged before paging and counting (None: every row).
        `sub`: the inner search of a chain or a `_has`. A chain that only finds a resident by an identifier
        (`Observation?patient.identifier=<ID number>`) says whose records are asked for, which the national
        index tells every province's hospitals too (policy.finds_residents); its outer matches are judged. Any
        other inner search is judged row by row: its matches would otherwise answer its criteria about records
        the caller may not see. `criteria`: the search the rows are for (an AuditEvent search by a reader confined
        to one patient matches on what that reader sees of each event)."""
        if not self.svc.policy.judges_rows(self.principal, rtype):
            return None
        if sub is not None and rtype == "Patient" and sub.collect is None and sub.filters and all(
                f.code == "identifier" and f.modifier is None and f.chain is None and f.has is None
                for f in sub.filters) and self.svc.policy.finds_residents(self.principal):
            return None
        patient = self.svc.policy.confined_to(self.principal, rtype) if rtype == "AuditEvent" else None
        if patient and criteria is not None and criteria.filters:
            return self._matches_as_seen(rtype, criteria, patient)
        return lambda doc: self.admits(rtype, doc)

    def _matches_as_seen(self, rtype: str, criteria: SearchRequest, patient: str) -> Callable[[dict[str, Any]], bool]:
        """A reader confined to one patient sees an event without the others it names (as_seen_by); a match of
        its criteria on what it does not see (`AuditEvent?patient=<another>`, `entity=<another's record>`) would
        tell which of its events concerned whom. Its rows match on what it sees."""
        flt = compile_filter(criteria, self.svc.registry, lambda *_: [], base_url=self.req.base)

        def admit(doc: dict[str, Any]) -> bool:
            if not self.admits(rtype, doc):
                return False
            seen = as_seen_by(doc["res"], patient)
            if seen is doc["res"]:
                return True
            return resource_matches(flt, seen, rtype, self.svc.registry, doc.get("_id"))

        return admit

    def require(self, rtype: str, doc: dict[str, Any] | None, access: str = "read") -> str | None:
        """Before a response that carries no body of the record (304, 410, errors, operations): 403 unless the
        caller may see it (access "read") or change it ("update", "delete": the change gate's decision). A
        deleted record is judged on its last live version. Returns the Consent relied on, if any."""
        if doc is None:
            return None
        if doc.get("del"):
            doc = self.svc.repo.last_live(rtype, doc)
            if doc is None:
                return None
        if access in ("update", "delete"):
            res = doc.get("res")
            self.svc.repo.admit(self.req.write, Change(rtype, res, res if access == "update" else None,
                                                       doc.get("prov")))
            return None
        decision = self.decide(rtype, doc)
        if not decision.allowed:
            self.refused_patients |= decision.patients
            err = forbidden(decision.reason)
            err.patients = sorted(decision.patients)
            raise err
        return decision.consent

    def tombstone_ok(self, rtype: str, rid: str, province: str | None) -> bool:
        """A deletion entry of a history: judged on the record's last live version."""
        if not self.judging:
            return True
        doc = self.svc.repo.get_raw(rtype, rid)
        live = self.svc.repo.last_live(rtype, doc) if doc is not None and doc.get("del") else None
        if live is None:
            return False
        return self.decide(rtype, live).allowed

    def judge(self, rtype: str, resource: dict[str, Any], province: str | None, letters: str = "rs") -> Decision:
        if not self.judging:
            return ALLOW
        rid = str(resource.get("id") or "")
        key = (rtype, rid, str((resource.get("meta") or {}).get("versionId") or ""), letters)
        found = self._memo.get(key)
        if found is None:
            found = self.svc.policy.disclose(self.principal, rtype, resource, province, letters,
                                             self._focus(rtype, resource))
            self._memo[key] = found
        return found

    def _focus(self, rtype: str, resource: dict[str, Any]) -> str | None:
        """The one patient this request names (break-the-glass reaches no other)."""
        segs = self.req.path.split("/")
        if len(segs) >= 2 and segs[0] == "Patient" and not segs[1].startswith(("$", "_")):
            return segs[1]
        if len(segs) >= 2 and segs[0] == rtype and segs[1] == resource.get("id"):
            owner = getattr(self.svc.policy, "owner", None)
            patients = owner(rtype, resource).patients if owner else frozenset()
            return next(iter(patients)) if len(patients) == 1 else None
        named = {value.split("/")[-1] for name, value in self.req.params
                 if name.split(":")[0].split(".")[0] in FOCUS_PARAMS and value and "," not in value}
        return named.pop() if len(named) == 1 else None

    def remember(self, rtype: str, rid: str, province: str | None) -> None:
        self._provinces[(rtype, rid)] = province

    def _province(self, rtype: str, rid: str) -> str | None:
        key = (rtype, rid)
        if key not in self._provinces:
            doc = self.svc.repo.current(rtype).find_one({"_id": rid}, {"prov": 1}) \
                if rtype in self.svc.repo.resource_types and rid else None
            self._provinces[key] = doc.get("prov") if doc else None
        return self._provinces[key]

    def _province_if_judging(self, rtype: str, resource: dict[str, Any]) -> str | None:
        """The record's province for judge(), which does not look at it when the caller is not judged (auth off):
        then no read is spent on it."""
        return self._province(rtype, str(resource.get("id") or "")) if self.judging else None

    def _note(self, rtype: str, resource: dict[str, Any], decision: Decision) -> None:
        ref = f"{rtype}/{resource.get('id')}"
        if ref not in self.disclosed:
            self.disclosed.append(ref)
        self.patients |= decision.patients
        if decision.consent and decision.consent not in self.consents:
            self.consents.append(decision.consent)
        self.break_glass = self.break_glass or decision.break_glass

    # -- releasing a response -------------------------------------------------------------------------------

    def release(self, resp: FhirResponse) -> FhirResponse:
        body = resp.body
        if body is None or not isinstance(body, dict) or self.req.public:
            return resp  # the CapabilityStatement, an OperationDefinition: the server's, not records (router.PUBLIC)
        rtype = body.get("resourceType")
        if rtype == "Bundle":
            resp.body = self._bundle(body)
        elif rtype == "Parameters":
            resp.body = self._parameters(body)
        elif rtype == "OperationOutcome":
            resp.body = self._outcome(body)
        elif isinstance(rtype, str) and rtype in self.svc.repo.resource_types:
            resp.body = self._single(resp, rtype, body)
        return resp

    def _as_seen(self, rtype: str, resource: dict[str, Any]) -> dict[str, Any]:
        """What of an allowed resource this caller sees: an AuditEvent shown to a reader confined to one patient
        leaves out the other residents the access concerned (app.audit.events.as_seen_by)."""
        if rtype != "AuditEvent" or not self.judging:
            return resource
        patient = self.svc.policy.confined_to(self.principal, rtype)
        return as_seen_by(resource, patient) if patient else resource

    def _letters(self) -> str:
        return {"POST": "rsc", "PUT": "rscu", "PATCH": "rsu"}.get(self.req.method, "rs")

    def _single(self, resp: FhirResponse, rtype: str, body: dict[str, Any]) -> dict[str, Any]:
        decision = self.judge(rtype, body, self._province_if_judging(rtype, body), self._letters())
        if decision.allowed:
            self._note(rtype, body, decision)
            return self._as_seen(rtype, body)
        if resp.registration_of is not None:
            self.patients |= decision.patients
            return registration_view(resp.registration_of, body)
        self.refused_patients |= decision.patients
        for header in ("Location", "Content-Location", "ETag", "Last-Modified"):
            resp.headers.pop(header, None)
        err = forbidden(decision.reason)
        err.patients = sorted(decision.patients)
        raise err

    def _resource_ok(self, res: Any) -> bool:
        """Judge one contained-in-a-response resource; containers are released recursively in place."""
        if not isinstance(res, dict):
            return True
        rtype = res.get("resourceType")
        if rtype == "Bundle":
            res.update(self._bundle(res))
            return True
        if rtype == "Parameters":
            res.update(self._parameters(res))
            return True
        if rtype == "OperationOutcome":
            res.update(self._outcome(res))
            return True
        if not isinstance(rtype, str) or rtype not in self.svc.repo.resource_types or not res.get("id"):
            return True  # not a stored record (an echo of the request, a generated resource)
        decision = self.judge(rtype, res, self._province_if_judging(rtype, res), self._letters())
        if decision.allowed:
            self._note(rtype, res, decision)
            seen = self._as_seen(rtype, res)
            if seen is not res:  # a Bundle entry or a Parameters part: changed where it is
                res.clear()
                res.update(seen)
        else:
            self.refused_patients |= decision.patients
        return decision.allowed

    def _bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        kept, dropped = [], 0
        for entry in bundle.get("entry") or []:
            if not isinstance(entry, dict) or self._resource_ok(entry.get("resource")):
                kept.append(entry)
                continue
            dropped += 1
            if bundle.get("type") in ("batch-response", "transaction-response"):
                outcome = FhirError(403, "withheld: this client may not see the resource").outcome()
                kept.append({"response": {"status": "403 Forbidden", "outcome": outcome}})
        if dropped:
            self.withheld += dropped
            if bundle.get("type") in ("searchset", "history"):
                kept.append(withheld_entry(dropped))
                if isinstance(bundle.get("total"), int):
                    bundle["total"] = max(0, bundle["total"] - dropped)
        if "entry" in bundle:
            bundle["entry"] = kept
        return bundle

    def _parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        def walk(parts: list[Any]) -> list[Any]:
            out = []
            for part in parts:
                if not isinstance(part, dict):
                    continue
                if "resource" in part and not self._resource_ok(part["resource"]):
                    self.withheld += 1
                    continue
                if isinstance(part.get("part"), list):
                    part["part"] = walk(part["part"])
                out.append(part)
            return out

        if isinstance(params.get("parameter"), list):
            params["parameter"] = walk(params["parameter"])
        return params

    def _outcome(self, outcome: dict[str, Any]) -> dict[str, Any]:
        if not self.judging:
            return outcome
        for issue in outcome.get("issue") or []:
            if isinstance(issue, dict) and isinstance(issue.get("diagnostics"), str):
                issue["diagnostics"] = self.scrub(issue["diagnostics"])
        return outcome

    def release_error(self, err: FhirError) -> FhirError:
        """An error on its way out, its texts scrubbed as an answer's OperationOutcome is: a 409 saying which
        Patient already holds an ID number, or which records still refer to one, must not name a record the
        caller may not see."""
        if self.judging:
            for issue in err.issues:
                issue.diagnostics = self.scrub(issue.diagnostics)
        return err

    def scrub(self, text: str) -> str:
        """Replace `Type/id` of records the caller may not see (ids the caller named itself stay)."""
        asked = self.req.path + "?" + self.req.query_string()

        def one(m: re.Match[str]) -> str:
            rtype, rid = m.group(1), m.group(2)
            if rtype not in self.svc.repo.resource_types or f"{rtype}/{rid}" in asked:
                return m.group(0)
            doc = self.svc.repo.get_doc(rtype, rid)
            if doc is None or doc.get("res") is None:
                return m.group(0)
            return m.group(0) if self.decide(rtype, doc).allowed else f"{rtype}/(withheld)"

        return _MENTION.sub(one, text)

    # -- the request's audit record -------------------------------------------------------------------------

    def audit_record(self, record: AccessRecord) -> AccessRecord:
        """The handler's record of the request, completed with what actually left."""
        ids = list(record.resource_ids)
        for ref in self.disclosed:
            rtype, _, rid = ref.partition("/")
            item = rid if rtype == record.resource_type else ref
            if item not in ids:
                ids.append(item)
        description = record.description
        if self.break_glass:
            description = f"{description}; {REVIEW_NOTE}" if description else REVIEW_NOTE
        return replace(record, resource_ids=ids,
                       patient_ids=sorted({*record.patient_ids, *self.patients, *self.judged_patients}),
                       withheld=record.withheld + self.withheld, consent=record.consent or next(
                           iter(self.consents), None), description=description,
                       break_glass=record.break_glass or self.break_glass)


def withheld_entry(count: int) -> dict[str, Any]:
    return outcome_entry([Issue(f"{count} matching resource(s) withheld: no consent covers this client",
                                "suppressed", "information")])


def registration_view(submitted: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """What a client that registered a known resident, but may not see their record, gets back: its own
    submission, the record's id and version, and the card identifier it needs. Nothing else of the record."""
    view = {k: v for k, v in submitted.items() if k not in ("id", "meta", "text", "contained")}
    view["resourceType"] = stored.get("resourceType", "Patient")
    view["id"] = stored.get("id")
    meta = stored.get("meta") or {}
    view["meta"] = {k: meta[k] for k in ("versionId", "lastUpdated") if k in meta}
    idents = [i for i in submitted.get("identifier") or [] if isinstance(i, dict)]
    cards = [i for i in stored.get("identifier") or [] if isinstance(i, dict) and i.get("system") == CARD_SYSTEM]
    view["identifier"] = idents + [c for c in cards if c not in idents]
    return view
