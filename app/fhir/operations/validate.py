"""$validate (FHIR R4 resource-operation-validate): check a resource without storing it."""

from __future__ import annotations

from typing import Any

from app.core.errors import Issue, bad_request, operation_outcome
from app.fhir.http import FhirResponse
from app.fhir.interactions import validator
from app.fhir.router import FhirRequest
from app.services import Services


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    body = req.body or {}
    resource: Any = body
    if body.get("resourceType") == "Parameters":
        resource = next((p.get("resource") for p in body.get("parameter", []) if p.get("name") == "resource"), None)
    if not isinstance(resource, dict):
        raise bad_request("$validate needs a resource, or Parameters with a 'resource' parameter")
    issues = validator(svc).issues(resource, type)
    if not issues:
        issues = [Issue("the resource is valid", "informational", "information")]
    return FhirResponse(200, operation_outcome(issues))


OPERATION = {
    "handler": handle,
    "access": None,
    "levels": ("type", "instance"),
    "types": ("Patient", "Observation", "DocumentReference", "Binary", "Organization", "Practitioner",
              "RelatedPerson", "Consent"),
    "methods": ("POST",),
    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
}
