"""$ehc-verify (system level; docs/terminal-vendors.md): check a scanned QR code for a terminal.

POST /fhir/$ehc-verify with Parameters token (valueString). Accepts EHC1 tokens and today's static code
`<64-hex card ID>:1[:...]`. Answer: Parameters valid (valueBoolean), patient (valueReference), ehcId,
expires (valueInstant), type (dynamic | static | legacy-static), requiresConfirmation (static codes: the
terminal asks for the PIN or an SMS code), and when not valid reason, one of app.ehc.token.VERIFY_REASONS:
malformed | unknown-key | bad-signature | bad-lifetime (exp not after iat, longer than the type allows, or outside
its key's signing period) | issued-in-future (iat ahead of the clock by more than the allowed skew) | expired |
suspended | cancelled | unknown-card (a well-formed code of a card this node does not know) | replayed. Every
verification is audited, valid or not.
"""

from __future__ import annotations

from typing import Any

from app.core.access import AccessRecord
from app.core.errors import bad_request
from app.ehc.plugin import card_service
from app.ehc.token import CLOCK_SKEW, MAX_LIFETIME, VERIFY_REASONS
from app.fhir.http import FhirResponse
from app.fhir.operations.definition import PATIENT_PROFILE, Operation, Param
from app.fhir.operations.ehc_qrcode import instant
from app.fhir.parameters import read_parameters
from app.fhir.router import FhirRequest
from app.ops.metrics import record_qr_verification
from app.services import Services


def handle(req: FhirRequest, svc: Services) -> FhirResponse:
    token = read_parameters(req.body, "$ehc-verify").value("token", "valueString")
    if token is None:
        raise bad_request("$ehc-verify needs a 'token' parameter (valueString)", expression="token")
    svc.policy.require(req.principal, "verify", "Patient")  # terminals only: resident tokens are refused
    result = card_service(svc).verify(token)
    record_qr_verification("valid" if result.valid else result.reason or "invalid")
    out: list[dict[str, Any]] = [{"name": "valid", "valueBoolean": result.valid}]
    if result.patient:
        out.append({"name": "patient", "valueReference": {"reference": f"Patient/{result.patient}"}})
    if result.ehc_id:
        out.append({"name": "ehcId", "valueString": result.ehc_id})
    if result.expires is not None:
        out.append({"name": "expires", "valueInstant": instant(result.expires)})
    if result.token_type:
        out.append({"name": "type", "valueCode": result.token_type})
    if result.requires_confirmation:
        out.append({"name": "requiresConfirmation", "valueBoolean": True})
    if result.reason:
        out.append({"name": "reason", "valueCode": result.reason})
    # A code of a resident's card that is not valid (forged, tampered, expired) is in their trail too: the
    # answer names no patient, the event does (the card's, as this node knows it).
    holder = result.patient or (card_service(svc).cards.patient_of(result.ehc_id) if result.ehc_id else None)
    req.audit(AccessRecord("verify", "Patient", [result.patient] if result.patient else [],
                           "0" if result.valid else "4", 200, req.principal, "$ehc-verify",
                           result.reason, patient_ids=[holder] if holder else [], remote_addr=req.remote_addr))
    return FhirResponse(200, {"resourceType": "Parameters", "parameter": out})


DEFINITION = Operation(
    id="ehc-verify",
    name="EhcVerify",
    title="电子健康卡验证 Verify a scanned QR code",
    description="POST /$ehc-verify (terminals): checks an EHC1 token's signature, issue time and lifetime, expiry, "
                "card status and replay, or a legacy static code '<64-hex card ID>:1[:...]'. A dynamic token is "
                "accepted once (its use is recorded), so the operation affects state and is invoked with POST only. "
                "Every verification is audited.",
    affects_state=True,
    parameters=(
        Param("token", "in", "string", 1, documentation="The scanned text"),
        Param("valid", "out", "boolean", 1, documentation="Whether the code is accepted"),
        Param("patient", "out", "Reference", documentation="The resident", targets=(PATIENT_PROFILE,)),
        Param("ehcId", "out", "string", documentation="The card ID"),
        Param("expires", "out", "instant", documentation="When the token expires"),
        Param("type", "out", "code", documentation="dynamic | static | legacy-static"),
        Param("requiresConfirmation", "out", "boolean",
              documentation="Static codes: the terminal must ask for the PIN or an SMS code"),
        Param("reason", "out", "code",
              documentation=f"When not valid: {' | '.join(VERIFY_REASONS)}. bad-lifetime: exp not after iat, "
                            f"longer than the type allows (dynamic {MAX_LIFETIME['dynamic']} s, static "
                            f"{MAX_LIFETIME['static'] // 86400} days) or outside its key's signing period; "
                            f"issued-in-future: iat more than {CLOCK_SKEW} s ahead of the server's clock"),
    ),
)

OPERATION = {
    "handler": handle,
    "access": None,
    "levels": ("system",),
    "types": (),
    "methods": ("POST",),
    "definition": DEFINITION.url,
    "operation": DEFINITION,
}
