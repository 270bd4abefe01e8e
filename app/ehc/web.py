"""Public endpoints for QR terminals: the node's SM2 keys and the card revocation list.

GET /ehc/keys         {"keys": [{kid, kty "EC", crv "SM2", alg "SM2SM3", x, y, nbf, exp, province}]}
GET /ehc/revocations  {"generatedAt", "province", "cards": [{"ehcId", "status", "since"}]}

No token is needed: both are what an offline terminal downloads to verify codes by itself
(docs/terminal-vendors.md). Neither carries a name or an ID number.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from app.core.timeutil import to_instant, utcnow

bp = Blueprint("ehc", __name__, url_prefix="/ehc")


def _service():  # type: ignore[no-untyped-def]
    from app.ehc.plugin import card_service

    return card_service(current_app.extensions["ehc"])


@bp.get("/keys")
def keys() -> Response:
    resp = jsonify({"keys": _service().signing.published()})
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@bp.get("/revocations")
def revocations() -> Response:
    service = _service()
    resp = jsonify({"generatedAt": to_instant(utcnow()), "province": service.svc.settings.province,
                    "cards": service.cards.revocations()})
    resp.headers["Cache-Control"] = "no-cache"
    return resp
