"""The QR image of $ehc-qrcode: it decodes (with an independent decoder) to exactly the token, at error level
M, in the smallest symbol alphanumeric mode allows, and is an SVG a browser shows as is."""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET

import pytest
import zxingcpp

from app.crypto import SM2PrivateKey
from app.ehc.token import TokenClaims, issue_token
from app.fhir.operations.ehc_qrcode import qr_svg

SCALE, BORDER = 4, 4


def token(kind: str = "dynamic", kid: str = "11ABCDEFGH") -> str:
    claims = TokenClaims(kind, secrets.token_hex(32).upper(), 1_800_000_000, 1_800_000_060, secrets.token_bytes(8))
    return issue_token(claims, kid, SM2PrivateKey.generate())


def modules(svg: bytes) -> tuple[int, bytearray]:
    """The module grid (0 dark, 255 light) the SVG draws, quiet zone included."""
    root = ET.fromstring(svg)
    size = int(root.attrib["width"]) // SCALE
    grid = bytearray([255]) * (size * size)
    path = root.find("{http://www.w3.org/2000/svg}path")
    assert path is not None and path.attrib["transform"] == f"scale({SCALE})"
    for x, y, run in re.findall(r"M(\d+) (\d+)\.5h(\d+)", path.attrib["d"]):
        for i in range(int(run)):
            grid[int(y) * size + int(x) + i] = 0
    return size, grid


def decode(svg: bytes) -> zxingcpp.Barcode:
    size, grid = modules(svg)
    rows = [bytes(grid[y * size:(y + 1) * size]) for y in range(size)]
    pixels = b"".join(bytes(b for b in row for _ in range(SCALE)) * SCALE for row in rows)
    found = zxingcpp.read_barcode(zxingcpp.ImageView(pixels, size * SCALE, size * SCALE, zxingcpp.ImageFormat.Lum))
    assert found is not None, "the image holds no readable QR code"
    return found


@pytest.mark.parametrize("kind,kid", [("dynamic", "11ABCDEFGH"), ("static", "44Z9"), ("dynamic", "A")])
def test_the_image_decodes_to_the_token_at_level_m(kind: str, kid: str) -> None:
    text = token(kind, kid)
    found = decode(qr_svg(text))
    assert found.text == text
    assert found.format == zxingcpp.BarcodeFormat.QRCode and found.ec_level == "M"


def test_smallest_symbol_of_alphanumeric_mode_with_a_quiet_zone() -> None:
    text = token()
    size, grid = modules(qr_svg(text))
    # 5 + 10 + 1 + 80 + 1 + 103 = 200 characters: version 8 (49 modules) at level M in alphanumeric mode;
    # byte mode would need version 10 (57 modules)
    assert len(text) == 200 and size == 49 + 2 * BORDER
    quiet = [grid[y * size + x] for y in range(size) for x in range(size)
             if min(x, y) < BORDER or max(x, y) >= size - BORDER]
    assert set(quiet) == {255}
    assert grid[BORDER * size + BORDER] == 0  # the finder pattern starts right inside the quiet zone


def test_an_svg_document_of_its_own() -> None:
    svg = qr_svg(token())
    assert svg.startswith(b"<svg") and ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
