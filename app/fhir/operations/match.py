"""Patient/$match (FHIR R4 Patient-match, IHE PDQm ITI-119): scored candidates for a Patient description.

POST Patient/$match with Parameters: resource (a Patient), onlyCertainMatches (boolean), count (integer).
Candidates come from the master index without scanning (the claims of the query's identifiers, and the name
postings by pinyin key and birth year); each is scored by app.mpi.matching.score. Answer: Bundle searchset,
best first, with entry.search.score and the match-grade extension; 'certainly-not' candidates are left out,
and with onlyCertainMatches only 'certain' ones are kept.
"""

from __future__ import annotations

from typing import Any

from app.core.access import AccessRecord
from app.core.errors import bad_request
from app.fhir.http import FhirResponse
from app.fhir.interactions import validate_inside
from app.fhir.parameters import read_parameters
from app.fhir.router import FhirRequest
from app.mpi.matching import score
from app.mpi.plugin import master_index
from app.services import Services

GRADE_URL = "http://hl7.org/fhir/StructureDefinition/match-grade"
DEFAULT_COUNT = 10
MAX_COUNT = 100


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    svc.policy.require(req.principal, "search", "Patient")
    params = read_parameters(req.body, "$match")
    query = params.value("resource", "resource")
    if query is None or query.get("resourceType") != "Patient":
        raise bad_request("the 'resource' parameter must be a Patient", expression="resource")
    validate_inside(svc, query, "Patient", params.named("resource")[0][0] + ".resource")
    only_certain = params.value("onlyCertainMatches", "valueBoolean") or False
    count = params.value("count", "valueInteger")
    count = DEFAULT_COUNT if count is None else count
    if not 1 <= count <= MAX_COUNT:
        raise bad_request(f"count must be an integer from 1 to {MAX_COUNT}", expression="count")
    if not query.get("identifier") and not query.get("name"):
        raise bad_request("the Patient needs at least an identifier or a name to match on", expression="resource")
    index = master_index(svc)
    candidates: dict[str, dict[str, Any]] = {}
    for ident in query.get("identifier") or []:
        if isinstance(ident, dict) and isinstance(ident.get("system"), str) and isinstance(ident.get("value"), str):
            doc = index.find(ident["system"], ident["value"])
            if doc is not None:
                candidates[doc["_id"]] = doc
    for pid in index.name_candidates(query):
        if pid not in candidates:
            doc = index.resolve(pid)
            if doc is not None:
                candidates[doc["_id"]] = doc
    scored = []
    for pid, doc in candidates.items():
        if not req.gate.admits("Patient", doc):
            continue
        result = score(query, doc["res"], registry=index.registry)
        if result.grade == "certainly-not" or (only_certain and result.grade != "certain"):
            continue
        scored.append((result.score, pid, doc, result.grade))
    scored.sort(key=lambda t: (-t[0], t[1]))
    entries = [{"fullUrl": f"{req.base}/Patient/{pid}", "resource": doc["res"],
                "search": {"mode": "match", "score": s,
                           "extension": [{"url": GRADE_URL, "valueCode": grade}]}}
               for s, pid, doc, grade in scored[:count]]
    req.audit(AccessRecord("operation", "Patient", [e["resource"]["id"] for e in entries], "0", 200,
                                   req.principal, "$match", remote_addr=req.remote_addr))
    return FhirResponse(200, {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                              "link": [{"relation": "self", "url": f"{req.base}/Patient/$match"}],
                              "entry": entries})


OPERATION = {
    "handler": handle,
    "levels": ("type",),
    "types": ("Patient",),
    "methods": ("POST",),
    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
}
