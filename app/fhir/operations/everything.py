"""Patient/{id}/$everything (FHIR R4 Patient-everything): the Patient and every resource that refers to it.

The compartment is found through the reference posting lists (Repository.referrers), never by scanning.
Answer: Bundle searchset, the Patient first (mode match), then the other resources (mode include); records
the caller may not see (cross-province without consent) are withheld and counted in an outcome entry.
Optional _type (comma-separated resource types) and _count (at most 1,000 resources) narrow it.
"""

from __future__ import annotations

from typing import Any

from app.core.access import AccessRecord
from app.core.errors import Issue, bad_request
from app.fhir.http import FhirResponse
from app.fhir.router import FhirRequest
from app.services import Services

MAX_ENTRIES = 1000


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    assert id is not None
    doc = svc.repo.get_doc("Patient", id)
    req.gate.require("Patient", doc)
    stored = svc.repo.read("Patient", id, req.write)  # 404 / 410
    types = {t.strip() for t in (req.param("_type") or "").split(",") if t.strip()}
    raw_count = req.param("_count")
    if raw_count is not None and (not raw_count.isdigit() or not 1 <= int(raw_count) <= MAX_ENTRIES):
        raise bad_request(f"_count must be 1 to {MAX_ENTRIES}", expression="_count")
    limit = int(raw_count) if raw_count else MAX_ENTRIES
    entries: list[dict[str, Any]] = [{"fullUrl": f"{req.base}/Patient/{id}", "resource": stored.resource,
                                      "search": {"mode": "match"}}]
    withheld = 0
    shown = [f"Patient/{id}"]
    for rtype, rid in svc.repo.referrers("Patient", id):
        if types and rtype not in types:
            continue
        if len(entries) > limit:
            break
        other = svc.repo.get_doc(rtype, rid)
        if other is None or other.get("del"):
            continue
        if not req.gate.admits(rtype, other):
            withheld += 1
            continue
        shown.append(f"{rtype}/{rid}")
        entries.append({"fullUrl": f"{req.base}/{rtype}/{rid}", "resource": other["res"],
                        "search": {"mode": "include"}})
    total = len(entries)
    if withheld:
        entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [Issue(
            f"{withheld} resource(s) withheld: no consent covers this client", "suppressed", "information"
        ).to_json()]}, "search": {"mode": "outcome"}})
    req.audit(AccessRecord("operation", "Patient", shown, "0", 200, req.principal, "$everything",
                                   patient_ids=[id], remote_addr=req.remote_addr, withheld=withheld))
    return FhirResponse(200, {"resourceType": "Bundle", "type": "searchset", "total": total, "entry": entries})


OPERATION = {
    "handler": handle,
    "levels": ("instance",),
    "types": ("Patient",),
    "methods": ("GET", "POST"),
    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
}
