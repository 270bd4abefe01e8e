"""Patient/{id}/$everything (FHIR R4 Patient-everything): the Patient and every resource that refers to it.

The compartment is found through the reference posting lists (Repository.referrers), never by scanning.
Answer: Bundle searchset, the Patient first (mode match), then the other resources (mode include); records
the caller may not see (cross-province without consent) are withheld and counted in an outcome entry.
Optional _type (comma-separated resource types) narrows it; _count (at most 1,000) pages it: `total` counts
the whole result the caller may see, and a `next` link carries a cursor of the last (type, id) shown. GET takes
them in the URL, POST in a Parameters body (or the URL). Only the instance level is served, without R4's start,
end and _since: the CapabilityStatement names this server's own definition (DEFINITION, based on R4's).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from app.core.access import AccessRecord
from app.core.errors import bad_request
from app.fhir.gate import withheld_entry
from app.fhir.http import FhirResponse
from app.fhir.operations.definition import Operation, Param
from app.fhir.parameters import read_parameters
from app.fhir.router import FhirRequest
from app.services import Services
from app.store.searcher import decode_cursor, encode_cursor

MAX_ENTRIES = 1000


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    assert id is not None
    doc = svc.repo.get_doc("Patient", id)
    req.gate.require("Patient", doc)
    stored = svc.repo.read("Patient", id, req.write)  # 404 / 410
    asked = [v for k, v in req.params if k == "_type"]
    raw_count = req.param("_count")
    from_body: list[tuple[str, str]] = []  # a POSTed Parameters' values, carried on by the next link
    if req.method == "POST" and req.body:
        params = read_parameters(req.body, "$everything")
        for where, p in params.named("_type"):
            value = p.get("valueCode", p.get("valueString"))
            if not isinstance(value, str) or not value:
                raise bad_request(f"{where} must be a valueCode naming resource types", expression=where)
            asked.append(value)
            from_body.append(("_type", value))
        count_value = params.value("_count", "valueInteger")
        if count_value is not None:
            raw_count = str(count_value)
            from_body.append(("_count", raw_count))
    types = {t.strip() for value in asked for t in value.split(",") if t.strip()}
    if raw_count is not None and (not raw_count.isdigit() or not 1 <= int(raw_count) <= MAX_ENTRIES):
        raise bad_request(f"_count must be 1 to {MAX_ENTRIES}", expression="_count")
    count = int(raw_count) if raw_count else MAX_ENTRIES
    after: tuple[str, str] | None = None
    if req.param("_cursor"):
        _, values = decode_cursor(req.param("_cursor") or "", 2)
        after = (str(values[0]), str(values[1]))

    def key(rtype: str, rid: str) -> tuple[str, str]:  # the Patient first, then by type and id
        return ("", rid) if (rtype, rid) == ("Patient", id) else (rtype, rid)

    # The whole result, in a stable order (type, id), made of what the caller may see: the total counts it,
    # and a page is a slice after the cursor's (type, id).
    everything: list[tuple[str, str, dict[str, Any]]] = [("Patient", id, stored.resource or {})]
    withheld = 0
    for rtype, rid in sorted(svc.repo.referrers("Patient", id)):
        if types and rtype not in types:
            continue
        other = svc.repo.get_doc(rtype, rid)
        if other is None or other.get("del"):
            continue
        if not req.gate.admits(rtype, other):
            withheld += 1
            continue
        everything.append((rtype, rid, other["res"]))
    rest = [e for e in everything if after is None or key(e[0], e[1]) > after]
    page, more = rest[:count], len(rest) > count
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{req.base}/{rtype}/{rid}", "resource": res,
         "search": {"mode": "match" if (rtype, rid) == ("Patient", id) else "include"}}
        for rtype, rid, res in page]
    if withheld:
        entries.append(withheld_entry(withheld))
    base_url = f"{req.base}/Patient/{id}/$everything"
    kept = [(k, v) for k, v in req.params if k != "_cursor" and not (from_body and k == "_count")] + from_body
    links = [{"relation": "self", "url": base_url + (f"?{urlencode(req.params)}" if req.params else "")}]
    if more and page:
        nxt = encode_cursor("n", list(key(page[-1][0], page[-1][1])))
        links.append({"relation": "next", "url": f"{base_url}?{urlencode([*kept, ('_cursor', nxt)])}"})
    req.audit(AccessRecord("operation", "Patient", [f"{t}/{i}" for t, i, _ in page], "0", 200, req.principal,
                           "$everything", patient_ids=[id], remote_addr=req.remote_addr, withheld=withheld))
    return FhirResponse(200, {"resourceType": "Bundle", "type": "searchset", "total": len(everything),
                              "link": links, "entry": entries})


DEFINITION = Operation(
    id="patient-everything",
    name="PatientEverything",
    title="Patient $everything: the record of one resident (instance level)",
    description="Patient/{id}/$everything, with GET or POST: the Patient and every resource that refers to it and "
                "the caller may see (a searchset Bundle, the Patient first). A part of R4's Patient-everything "
                "(its base): only the instance level is served (not Patient/$everything), and of its parameters "
                "_type and _count; start, end and _since are not supported.",
    affects_state=False,
    base="http://hl7.org/fhir/OperationDefinition/Patient-everything",
    parameters=(
        Param("_type", "in", "code", max="*",
              documentation="Resource types to include (each value may list several, comma-separated)"),
        Param("_count", "in", "integer",
              documentation="Entries per page, 1 to 1,000 (default 1,000); the next link pages on"),
        Param("return", "out", "Bundle", 1, documentation="A searchset Bundle: the Patient, then the resources that "
                                                          "refer to it"),
    ),
)

OPERATION = {
    "handler": handle,
    "levels": ("instance",),
    "types": ("Patient",),
    "methods": ("GET", "POST"),
    "definition": DEFINITION.url,
    "operation": DEFINITION,
}
