"""Patient/$merge (after FHIR R5 Patient-merge): fold a duplicate Patient into the resident's record.

POST Patient/$merge with Parameters: source-patient (valueReference) or source-patient-identifier
(valueIdentifier), target-patient or target-patient-identifier, optional preview (valueBoolean).
Answer: Parameters with input (the request), outcome (OperationOutcome) and result (the target Patient).
The rules are app.mpi.merge's.
"""

from __future__ import annotations

from app.core.access import AccessRecord
from app.core.errors import bad_request, info_outcome, unprocessable
from app.core.ids import split_reference
from app.fhir.http import FhirResponse
from app.fhir.operations.definition import PATIENT_PROFILE, Operation, Param
from app.fhir.parameters import Parameters, read_parameters
from app.fhir.router import FhirRequest
from app.mpi.merge import merge_patients
from app.mpi.plugin import master_index
from app.services import Services


def _patient_id(req: FhirRequest, svc: Services, params: Parameters, side: str) -> str:
    ref = params.value(f"{side}-patient", "valueReference")
    if ref is not None:
        target = ref.get("reference")
        parts = split_reference(target, req.base) if isinstance(target, str) else None
        if not parts or parts[0] != "Patient":
            raise bad_request(f"{side}-patient must reference a Patient", expression=f"{side}-patient")
        return parts[1]
    ident = params.value(f"{side}-patient-identifier", "valueIdentifier")
    if ident is not None and isinstance(ident.get("system"), str) and isinstance(ident.get("value"), str):
        doc = req.gate.visible_or_none("Patient", master_index(svc).find(ident["system"], ident["value"]),
                                       "$merge", 422)
        if doc is None:  # unknown and withheld alike ($ihe-pix's rule)
            raise unprocessable(f"no resident holds {ident['system']}|{ident['value']}",
                                expression=f"{side}-patient-identifier")
        return str(doc["_id"])
    raise bad_request(f"{side}-patient or {side}-patient-identifier is required", expression=f"{side}-patient")


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    body = req.body
    params = read_parameters(body, "$merge")
    source_id = _patient_id(req, svc, params, "source")
    target_id = _patient_id(req, svc, params, "target")
    preview = params.value("preview", "valueBoolean") is True
    for rid in (source_id, target_id):
        req.gate.require("Patient", svc.repo.get_doc("Patient", rid), "update")
    result = merge_patients(svc, master_index(svc), svc.extensions["mpi_hooks"], source_id, target_id, req.write,
                            preview=preview)
    what = "would merge" if preview else "merged"
    text = (f"{what} Patient/{source_id} into Patient/{target_id}; "
            f"{len(result.repointed)} resource(s) {'would be ' if preview else ''}re-pointed")
    if not preview:
        req.audit(AccessRecord("operation", "Patient", [source_id, target_id, *result.repointed], "0",
                                       200, req.principal, "$merge", text, patient_ids=[target_id],
                                       remote_addr=req.remote_addr))
    return FhirResponse(200, {"resourceType": "Parameters", "parameter": [
        {"name": "input", "resource": body},
        {"name": "outcome", "resource": info_outcome(text)},
        {"name": "result", "resource": result.target},
    ]})


DEFINITION = Operation(  # R4 has no Patient-merge
    id="patient-merge",
    name="PatientMerge",
    title="Merge two Patients of one resident (after FHIR R5 Patient-merge)",
    description="POST Patient/$merge: the source Patient becomes inactive with link.type replaced-by and its records "
                "are re-pointed to the target. R4 has no standard $merge; this follows the R5 definition's "
                "parameters.",
    affects_state=True,
    parameters=(
        Param("source-patient", "in", "Reference", documentation="The duplicate to fold in",
              targets=(PATIENT_PROFILE,)),
        Param("source-patient-identifier", "in", "Identifier", documentation="Or: an identifier of the duplicate"),
        Param("target-patient", "in", "Reference", documentation="The record that stays", targets=(PATIENT_PROFILE,)),
        Param("target-patient-identifier", "in", "Identifier",
              documentation="Or: an identifier of the record that stays"),
        Param("preview", "in", "boolean", documentation="true: report what would happen, change nothing"),
        Param("input", "out", "Parameters", 1, documentation="The request"),
        Param("outcome", "out", "OperationOutcome", 1, documentation="What was done"),
        Param("result", "out", "Patient", 1, documentation="The target Patient"),
    ),
)

OPERATION = {
    "handler": handle,
    "access": "update",
    "levels": ("type",),
    "types": ("Patient",),
    "methods": ("POST",),
    "definition": DEFINITION.url,
    "operation": DEFINITION,
}
