"""Patient/{id}/$ehc-qrcode: a signed QR token for the resident's electronic health card.

POST Patient/{id}/$ehc-qrcode with Parameters: type (valueCode dynamic | static, default dynamic),
validity (valueInteger seconds; dynamic 5-300, default 60; static 3,600 to one year, default one year),
image (valueBoolean, default true; false skips drawing the code). Issuing stores nothing (the token carries all it
needs), so the operation does not affect state and is also invoked with GET, the same parameters in the URL
(R4: a server SHALL accept GET for such an operation whose parameters are all primitive).
Answer: Parameters token (valueString), expires (valueInstant), ehcId (valueString) and image (valueAttachment,
image/svg+xml, base64): the smallest QR version that holds the token, in alphanumeric mode, error level M.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any, cast

import zxingcpp

from app.core.access import AccessRecord
from app.core.errors import bad_request, gone, not_found
from app.ehc.plugin import card_service
from app.fhir.http import FhirResponse
from app.fhir.operations.definition import Operation, Param
from app.fhir.parameters import read_parameters
from app.fhir.router import FhirRequest
from app.services import Services

_DARK = re.compile(b"\x00+")


def qr_svg(token: str, scale: int = 4, border: int = 4) -> bytes:
    """The QR code of a token as SVG: error level M, the smallest version that holds it (the token's characters
    are all in alphanumeric mode), a quiet zone of `border` modules; one path of horizontal runs of dark
    modules. Encoded by zxing-cpp (its compiled encoder chooses the mask as ISO/IEC 18004 says)."""
    symbol = zxingcpp.create_barcode(token, zxingcpp.BarcodeFormat.QRCode, ec_level="M")
    modules = memoryview(cast(Any, symbol.to_image(scale=1, add_quiet_zones=False)))  # a buffer
    size = modules.shape[0] if modules.shape else 0
    pixels = modules.tobytes()  # one byte per module, row by row: 0 dark, 255 light
    runs = [f"M{m.start() - y * size + border} {y + border}.5h{m.end() - m.start()}"
            for y in range(size) for m in _DARK.finditer(pixels, y * size, (y + 1) * size)]
    width = (size + 2 * border) * scale
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{width}" class="ehc-qr">'
            f'<path transform="scale({scale})" stroke="#000" d="{"".join(runs)}"/></svg>').encode("ascii")


def instant(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    assert id is not None
    token_type, validity, image = _query(req) if req.method == "GET" else _body(req)
    if token_type not in ("dynamic", "static"):
        raise bad_request("type must be 'dynamic' or 'static'", expression="type")
    known = req.instance  # read by the route table for the gate, when it is this Patient's
    doc = known if known is not None and known.get("_id") == id else svc.repo.get_doc("Patient", id)
    req.gate.require("Patient", doc)
    if doc is None:
        raise not_found(f"Patient/{id} is not known")
    if doc.get("del"):
        raise gone(f"Patient/{id} was deleted")
    token, exp, card_id = card_service(svc).issue(doc["res"], token_type, validity)
    out: list[dict[str, Any]] = [
        {"name": "token", "valueString": token},
        {"name": "expires", "valueInstant": instant(exp)},
        {"name": "ehcId", "valueString": card_id},
        {"name": "type", "valueCode": token_type},
    ]
    if image:
        out.append({"name": "image", "valueAttachment": {
            "contentType": "image/svg+xml", "data": base64.b64encode(qr_svg(token)).decode("ascii"),
            "title": "电子健康卡二维码"}})
    req.audit(AccessRecord("operation", "Patient", [id], "0", 200, req.principal, "$ehc-qrcode",
                                   patient_ids=[id], remote_addr=req.remote_addr))
    return FhirResponse(200, {"resourceType": "Parameters", "parameter": out})


def _body(req: FhirRequest) -> tuple[str, int | None, bool]:
    params = read_parameters(req.body, "$ehc-qrcode", required=False)
    validity = params.value("validity", "valueInteger")  # seconds
    return (params.value("type", "valueCode", "valueString") or "dynamic", validity,
            params.value("image", "valueBoolean") is not False)


def _query(req: FhirRequest) -> tuple[str, int | None, bool]:
    raw = req.param("validity")
    if raw is not None and not (raw.isascii() and raw.isdigit()):
        raise bad_request("validity must be an integer (seconds)", expression="validity")
    image = req.param("image")
    if image not in (None, "true", "false"):
        raise bad_request("image must be true or false", expression="image")
    return req.param("type") or "dynamic", int(raw) if raw is not None else None, image != "false"


DEFINITION = Operation(
    id="ehc-qrcode",
    name="EhcQrCode",
    title="电子健康卡二维码 Issue a QR code for the resident's electronic health card",
    description="Patient/{id}/$ehc-qrcode: a signed token (EHC1:kid:payload:signature, QR alphanumeric mode, no name "
                "or ID number in it) and its QR image. Dynamic tokens live 5 to 300 seconds (default 60) and are "
                "accepted once; static tokens are printable, long-lived and need a second factor at use. Issuing "
                "stores nothing, so it is invoked with POST (a Parameters body) or GET (the parameters in the URL).",
    affects_state=False,
    parameters=(
        Param("type", "in", "code", documentation="dynamic (default) or static"),
        Param("validity", "in", "integer",
              documentation="Seconds: dynamic 5-300 (default 60); static 3,600 to one year (default one year)"),
        Param("image", "in", "boolean", documentation="false: no image (default true)"),
        Param("token", "out", "string", 1, documentation="The text in the QR code"),
        Param("expires", "out", "instant", 1, documentation="When the token expires"),
        Param("ehcId", "out", "string", 1, documentation="The electronic health card ID (64 hex)"),
        Param("type", "out", "code", 1, documentation="dynamic or static"),
        Param("image", "out", "Attachment", documentation="The QR code, image/svg+xml"),
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
