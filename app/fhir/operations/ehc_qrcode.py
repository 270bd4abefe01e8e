"""Patient/{id}/$ehc-qrcode: a signed QR token for the resident's electronic health card.

POST Patient/{id}/$ehc-qrcode with Parameters: type (valueCode dynamic | static, default dynamic),
validity (valueInteger seconds; dynamic 5-300, default 60; static 3,600 to one year, default one year),
image (valueBoolean, default true; false skips drawing the code).
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
    params = read_parameters(req.body, "$ehc-qrcode", required=False)
    token_type = params.value("type", "valueCode", "valueString") or "dynamic"
    if token_type not in ("dynamic", "static"):
        raise bad_request("type must be 'dynamic' or 'static'", expression="type")
    validity = params.value("validity", "valueInteger")  # seconds
    image = params.value("image", "valueBoolean") is not False
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


OPERATION = {
    "handler": handle,
    "levels": ("instance",),
    "types": ("Patient",),
    "methods": ("POST",),
    "definition": "https://ehc.example.cn/fhir/OperationDefinition/ehc-qrcode",
}
