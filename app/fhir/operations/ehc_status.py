"""Patient/{id}/$ehc-status: set the status of the resident's current card.

POST Patient/{id}/$ehc-status with Parameters status (valueCode active | suspended (挂失) | cancelled (注销)),
optional reason (valueString). Cancelled is final: any later change answers 409. Answer: Parameters ehcId,
status, patient. Suspended and cancelled cards are listed at GET /ehc/revocations.
"""

from __future__ import annotations

from typing import Any

from app.core.access import AccessRecord
from app.core.errors import bad_request, unprocessable
from app.ehc.cards import STATUSES, current_card
from app.ehc.plugin import card_service
from app.fhir.http import FhirResponse
from app.fhir.router import FhirRequest
from app.services import Services


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    assert id is not None
    body = req.body or {}
    if body.get("resourceType") != "Parameters":
        raise bad_request("$ehc-status needs a Parameters body", expression="Parameters")
    params = {str(p.get("name")): p for p in body.get("parameter") or [] if isinstance(p, dict)}
    status = (params.get("status") or {}).get("valueCode")
    if status not in STATUSES:
        raise bad_request(f"status must be one of {', '.join(STATUSES)}", expression="status")
    reason = (params.get("reason") or {}).get("valueString")
    stored = svc.repo.read("Patient", id, req.write, fire=False)  # the router's gate admitted the change
    card = current_card(stored.resource)
    if card is None:
        raise unprocessable(f"Patient/{id} has no electronic health card")
    state = card_service(svc).cards.set_status(card["value"], status, id, reason)
    out: list[dict[str, Any]] = [
        {"name": "ehcId", "valueString": card["value"]},
        {"name": "status", "valueCode": state["status"]},
        {"name": "patient", "valueReference": {"reference": f"Patient/{id}"}},
    ]
    req.audit(AccessRecord("operation", "Patient", [id], "0", 200, req.principal, "$ehc-status",
                                   f"card {status}", patient_ids=[id], remote_addr=req.remote_addr))
    return FhirResponse(200, {"resourceType": "Parameters", "parameter": out})


OPERATION = {
    "handler": handle,
    "access": "update",
    "levels": ("instance",),
    "types": ("Patient",),
    "methods": ("POST",),
    "definition": "https://ehc.example.cn/fhir/OperationDefinition/ehc-status",
}
