"""My card: the dynamic QR code (refreshed before it expires, with a countdown), the masked card number, the
card status, and the printable paper code (a long-lived static code). A suspended or cancelled card says why
(the reason recorded when its status was set) and what to do. Everything goes through the API with the
resident's token: codes from Patient/{id}/$ehc-qrcode, the status, since when and why from
GET Patient/{id}/$ehc-status."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import jsonify, redirect, url_for
from flask.typing import ResponseReturnValue

from app.portal.fhirclient import ApiError
from app.portal.web import api, bp, fhir, fhir_ok, login_required, page, patient_label, sess

EHC_SYSTEM = "urn:oid:2.16.156.10011.1.19"
DYNAMIC_SECONDS = 60


def mask_card(card_id: str) -> str:
    """The card number as residents see it: first and last four characters, the rest hidden."""
    if len(card_id) <= 8:
        return "****"
    return f"{card_id[:4]} **** **** {card_id[-4:]}"


def current_card(patient: dict[str, Any]) -> dict[str, Any] | None:
    for ident in patient.get("identifier") or []:
        if ident.get("system") == EHC_SYSTEM and ident.get("use") != "old":
            return dict(ident)
    return None


def card_status(card_id: str) -> dict[str, Any]:
    """{status: active | suspended | cancelled, since, reason} of the acting patient's card, from
    GET Patient/{id}/$ehc-status; the public revocation list (no reason) when that cannot answer."""
    ans = fhir("GET", f"Patient/{sess().get('acting')}/$ehc-status")
    if ans.ok and isinstance(ans.body, dict):
        out = {p.get("name"): p for p in ans.body.get("parameter") or [] if isinstance(p, dict)}
        if (out.get("ehcId") or {}).get("valueString") == card_id:
            return {"status": str((out.get("status") or {}).get("valueCode") or "active"),
                    "since": (out.get("since") or {}).get("valueInstant"),
                    "reason": (out.get("reason") or {}).get("valueString")}
    listed = api().open("GET", "/ehc/revocations", {"Accept": "application/json"})
    for entry in (listed.body or {}).get("cards", []) if isinstance(listed.body, dict) else []:
        if entry.get("ehcId") == card_id:
            return {"status": str(entry.get("status")), "since": entry.get("since"), "reason": None}
    return {"status": "active", "since": None, "reason": None}


def issue(kind: str, validity: int | None = None) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "type", "valueCode": kind}]
    if validity:
        params.append({"name": "validity", "valueInteger": validity})
    body = fhir_ok("POST", f"Patient/{sess().get('acting')}/$ehc-qrcode",
                   body={"resourceType": "Parameters", "parameter": params})
    out = {p["name"]: p for p in body.get("parameter", [])}
    exp = datetime.strptime(out["expires"]["valueInstant"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    image = out["image"]["valueAttachment"]
    return {"token": out["token"]["valueString"], "expires": int(exp.timestamp()),
            "expires_text": exp.astimezone().strftime("%Y-%m-%d"),
            "src": f"data:{image['contentType']};base64,{image['data']}"}


def _card_context() -> dict[str, Any]:
    patient = fhir_ok("GET", f"Patient/{sess().get('acting')}")
    card = current_card(patient)
    ctx: dict[str, Any] = {"patient": patient, "name": patient_label(patient), "card": card, "qr": None}
    if card is None:
        ctx["status"] = "none"
        return ctx
    ctx["masked"] = mask_card(str(card["value"]))
    ctx["kind"] = next((c.get("code") for c in (card.get("type") or {}).get("coding", [])), "formal")
    ctx.update(card_status(str(card["value"])))
    return ctx


@bp.route("/card", methods=["GET"])
@login_required
def card() -> ResponseReturnValue:
    ctx = _card_context()
    if ctx["status"] == "active":
        try:
            ctx["qr"] = issue("dynamic", DYNAMIC_SECONDS)
        except ApiError as err:  # suspended meanwhile (409), or the token may not issue codes
            ctx["status"] = "suspended" if err.answer.status == 409 else ctx["status"]
            ctx["error"] = err.answer.diagnostics()
    if ctx["qr"]:
        ctx["qr"]["left"] = max(0, ctx["qr"]["expires"] - int(time.time()))
    return page("portal/card.html", **ctx)


@bp.route("/card/qr", methods=["POST"])
@login_required
def card_qr() -> ResponseReturnValue:
    """A fresh dynamic code for the page's script (CSRF header), or a plain form post without script."""
    from flask import request

    try:
        qr = issue("dynamic", DYNAMIC_SECONDS)
    except ApiError as err:
        if request.headers.get("X-CSRF-Token"):
            return jsonify(error=err.answer.diagnostics()), err.answer.status
        return redirect(url_for("portal.card"))
    if not request.headers.get("X-CSRF-Token"):
        return redirect(url_for("portal.card"))
    qr["left"] = max(0, qr["expires"] - int(time.time()))
    return jsonify(qr)


@bp.route("/card/print", methods=["POST"])
@login_required
def card_print() -> ResponseReturnValue:
    ctx = _card_context()
    if ctx["status"] != "active":
        return redirect(url_for("portal.card"))
    ctx["qr"] = issue("static")
    ans = fhir("GET", f"Patient/{sess().get('acting')}")
    ctx["name"] = patient_label(ans.body if ans.ok else None)
    return page("portal/print.html", **ctx)
