"""$validate (after FHIR R4 Resource-validate): check a resource without storing it.

POST [type]/$validate or [type]/{id}/$validate with the resource itself, or Parameters resource (and profile);
`profile` may also be given in the URL. R4's `mode` is not supported, nor GET: the CapabilityStatement names this
server's own definition (DEFINITION, based on R4's)."""

from __future__ import annotations

from typing import Any

from app.core.access import Change
from app.core.errors import FhirError, Issue, bad_request, operation_outcome
from app.fhir.http import FhirResponse
from app.fhir.interactions import validator
from app.fhir.operations.definition import Operation, Param
from app.fhir.parameters import read_parameters
from app.fhir.router import FhirRequest
from app.services import Services


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    body = req.body or {}
    resource: Any = body
    profile = req.param("profile")  # a profile of fhir_profiles/StructureDefinition (or meta.profile)
    if body.get("resourceType") == "Parameters":
        params = read_parameters(body, "$validate")
        resource = params.value("resource", "resource")
        profile = params.value("profile", "valueUri", "valueCanonical") or profile
    if not isinstance(resource, dict):
        raise bad_request("$validate needs a resource, or Parameters with a 'resource' parameter")
    issues = validator(svc).issues(resource, type, profile=profile)
    if not issues and (type or resource.get("resourceType")) == "Patient":
        stored = svc.repo.get_doc("Patient", id) if id else None
        existing = stored.get("res") if stored and not stored.get("del") else None
        if _may_write(req, svc, existing, resource, stored):
            issues = patient_rules(svc, resource, id, existing)
        else:  # the master index would tell whether an ID number is registered: only to whoever may register it
            issues = [Issue("the master patient index rules (one resident per ID number) were not checked: this "
                            "token may not write this Patient", "informational", "information")]
    if not issues:
        issues = [Issue("the resource is valid", "informational", "information")]
    return FhirResponse(200, operation_outcome(issues))


def _may_write(req: FhirRequest, svc: Services, existing: dict[str, Any] | None, patient: dict[str, Any],
               stored: dict[str, Any] | None) -> bool:
    """Whether the change gate would let this caller make the create or update being validated."""
    after = {**patient, "resourceType": "Patient", "id": str((stored or {}).get("_id") or patient.get("id") or "")}
    try:
        svc.repo.admit(req.write, Change("Patient", existing, after, (stored or {}).get("prov")))
    except FhirError:
        return False
    return True


def patient_rules(svc: Services, patient: dict[str, Any], pid: str | None,
                  existing: dict[str, Any] | None) -> list[Issue]:
    """The business rules a create or update of a Patient applies (the master patient index): identifier
    formats and check characters, birth date and gender against the ID number, one resident per document."""
    from app.mpi.identifiers import normalize_patient_identifiers
    from app.mpi.plugin import master_index

    index = master_index(svc)
    normalised, issues = normalize_patient_identifiers(patient, index.registry, existing=existing)
    if issues:
        return issues
    owners = index.owners(e.key for e in index.entries(normalised))
    others = sorted({o for o in owners.values() if o != pid})
    if pid and others:
        return [Issue("an identifier of this Patient belongs to another registered resident; the update would "
                      "be refused (409)", "duplicate", "error", ["Patient.identifier"])]
    if not pid and len(others) > 1:
        return [Issue("the identifiers belong to different registered residents; the create would be refused "
                      "(409)", "duplicate", "error", ["Patient.identifier"])]
    if not pid and others:
        return [Issue("the resident is registered already: a create would add these identifiers to their record "
                      "(200)", "informational", "information")]
    return []


DEFINITION = Operation(
    id="resource-validate",
    name="ResourceValidate",
    title="Validate a resource",
    description="POST [type]/$validate or [type]/{id}/$validate: checks a resource against R4 (structure, "
                "cardinality, required bindings, invariants) and a profile of this server (the one named, or in "
                "meta.profile), and a Patient also against the master patient index rules (for a caller who may "
                "write it); stores nothing. The body is the resource itself or Parameters. A part of R4's "
                "Resource-validate (its base): mode is not supported, and it is invoked with POST only.",
    affects_state=False,
    base="http://hl7.org/fhir/OperationDefinition/Resource-validate",
    parameters=(
        Param("resource", "in", "Resource", documentation="The resource to check (or the whole body)"),
        Param("profile", "in", "uri",
              documentation="A profile of this server to check against (also as a URL parameter)"),
        Param("return", "out", "OperationOutcome", 1,
              documentation="The issues found; one informational issue when there are none"),
    ),
)

OPERATION = {
    "handler": handle,
    "access": None,
    "levels": ("type", "instance"),
    "types": "*",  # every resource type
    "methods": ("POST",),
    "definition": DEFINITION.url,
    "operation": DEFINITION,
}
