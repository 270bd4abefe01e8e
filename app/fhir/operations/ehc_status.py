"""Patient/{id}/$ehc-status: the status of the resident's current card — read it (GET) or set it (POST).

POST Patient/{id}/$ehc-status with Parameters status (valueCode active | suspended (挂失) | cancelled (注销)),
optional reason (valueString) — needs update access to the Patient. Cancelled is final: any later change
answers 409. GET Patient/{id}/$ehc-status changes nothing and needs read access (a resident's own token may
ask). Both answer Parameters ehcId, status, since (when the status was set), reason (why it was suspended or
cancelled, as recorded; absent for an active card) and patient. Suspended and cancelled cards are listed at
GET /ehc/revocations (without the reason: that list is public).
"""

from __future__ import annotations

from typing import Any

from app.core.access import AccessRecord
from app.core.errors import bad_request, unprocessable
from app.core.timeutil import to_instant
from app.ehc.cards import STATUSES, current_card
from app.ehc.plugin import card_service
from app.fhir.http import FhirResponse
from app.fhir.operations.definition import PATIENT_PROFILE, Operation, Param
from app.fhir.parameters import read_parameters
from app.fhir.router import FhirRequest
from app.services import Services


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    assert id is not None
    status = reason = None
    if req.method == "POST":
        params = read_parameters(req.body, "$ehc-status")
        status = params.value("status", "valueCode")
        if status not in STATUSES:
            raise bad_request(f"status must be one of {', '.join(STATUSES)}", expression="status")
        reason = params.value("reason", "valueString")
        if reason is not None and len(reason) > 500:
            raise bad_request("reason must be a string of at most 500 characters", expression="reason")
    # The router's gate admitted the read (GET) or the change (POST) of this Patient.
    stored = svc.repo.read("Patient", id, req.write, fire=False, doc=req.instance)
    card = current_card(stored.resource)
    if card is None:
        raise unprocessable(f"Patient/{id} has no electronic health card")
    cards = card_service(svc).cards
    if status is not None:
        state = cards.set_status(card["value"], status, id, reason)
    else:
        state = cards.get(card["value"]) or {}
        state = {**state, "status": cards.status(card["value"])}  # also a suspension at another node
    out: list[dict[str, Any]] = [
        {"name": "ehcId", "valueString": card["value"]},
        {"name": "status", "valueCode": state["status"]},
    ]
    if state.get("since") is not None:
        out.append({"name": "since", "valueInstant": to_instant(state["since"])})
    if state["status"] != "active" and state.get("reason"):
        out.append({"name": "reason", "valueString": str(state["reason"])})
    out.append({"name": "patient", "valueReference": {"reference": f"Patient/{id}"}})
    req.audit(AccessRecord("operation", "Patient", [id], "0", 200, req.principal, "$ehc-status",
                           f"card {status}" if status else "card status read", patient_ids=[id],
                           remote_addr=req.remote_addr))
    return FhirResponse(200, {"resourceType": "Parameters", "parameter": out})


# R4 invokes an operation that affects state with POST only. This one sets the status (POST, affectsState true);
# its GET, without parameters, reads the status and changes nothing: a read-only form of the same operation that
# the definition documents (docs/conformance.md, "OperationDefinitions"), kept so that a resident's token (read
# access) can ask.
DEFINITION = Operation(
    id="ehc-status",
    name="EhcStatus",
    title="电子健康卡状态 Read or set the status of the resident's card (挂失 / 注销)",
    description="POST Patient/{id}/$ehc-status sets the status of the resident's current card: active, suspended "
                "(lost, 挂失) or cancelled (注销, final), with an optional reason (update access); it affects state. "
                "GET Patient/{id}/$ehc-status, without parameters, only reads the status and changes nothing (read "
                "access): this server's read-only form of the operation, outside R4's rule that an operation "
                "affecting state is invoked with POST. Both answer the card ID, its status, since when, why (for a "
                "suspended or cancelled card, the reason recorded when it was set) and the patient. Suspended and "
                "cancelled cards are published at GET /ehc/revocations, without the reason.",
    affects_state=True,
    comment="GET reads, POST sets: see the description.",
    parameters=(
        Param("status", "in", "code", documentation="active | suspended | cancelled (POST: required; GET: not used)"),
        Param("reason", "in", "string",
              documentation="Why (kept with the card, returned by later reads of the status); at most 500 characters"),
        Param("ehcId", "out", "string", 1, documentation="The card ID"),
        Param("status", "out", "code", 1, documentation="The card's status now"),
        Param("since", "out", "instant", documentation="When the card got this status"),
        Param("reason", "out", "string",
              documentation="Why the card is suspended or cancelled, as recorded when the status was set (absent "
                            "for an active card or when no reason was given)"),
        Param("patient", "out", "Reference", 1, documentation="The resident", targets=(PATIENT_PROFILE,)),
    ),
)

OPERATION = {
    "handler": handle,
    "access": {"GET": "read", "POST": "update"},
    "levels": ("instance",),
    "types": ("Patient",),
    "methods": ("GET", "POST"),
    "definition": DEFINITION.url,
    "operation": DEFINITION,
}
