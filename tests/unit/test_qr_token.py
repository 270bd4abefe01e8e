"""The EHC1 QR token of docs/terminal-vendors.md: encoding, strict parsing, signatures, offline verification
by a vendor."""

import base64
import re
import struct

import pytest
from gmssl.sm2 import CryptSM2

from app.crypto import SM2PrivateKey
from app.ehc.token import (
    TokenClaims,
    TokenMalformed,
    issue_token,
    parse_legacy_static,
    parse_token,
    verify_token_signature,
)

CARD = "98FF9F2C05145CB9305E9D8A57E072BB51180CA49E5BE5E9D41BCE3A9A571928"
QR_ALPHANUMERIC = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


@pytest.fixture(scope="module")
def key():
    return SM2PrivateKey.generate()


@pytest.fixture(scope="module")
def claims():
    return TokenClaims("dynamic", CARD, 1_700_000_000, 1_700_000_060, bytes.fromhex("0102030405060708"))


@pytest.fixture(scope="module")
def token(key, claims):
    return issue_token(claims, "SC2025A", key)


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=")


def _signed(key, p: bytes, kid: str = "K1") -> str:
    head = f"EHC1:{kid}:{_b32(p)}"
    return f"{head}:{_b32(key.sign(head.encode()))}"


def test_round_trip(token, key, claims):
    parsed = parse_token(token)
    assert parsed.kid == "SC2025A"
    assert parsed.claims == claims
    assert parsed.signed_part == token.rsplit(":", 1)[0].encode()
    assert len(parsed.signature) == 64
    assert verify_token_signature(parsed, key.public_key)
    assert not verify_token_signature(parsed, SM2PrivateKey.generate().public_key)


def test_layout(token):
    prefix, kid, payload, sig = token.split(":")
    assert (prefix, kid, len(payload), len(sig)) == ("EHC1", "SC2025A", 80, 103)
    p = base64.b32decode(payload)
    assert p[0] == 1 and p[1] == 1 and p[2:34].hex().upper() == CARD
    assert struct.unpack(">II", p[34:42]) == (1_700_000_000, 1_700_000_060)
    assert p[42:] == bytes.fromhex("0102030405060708")


def test_static_type_code(key, claims):
    static = TokenClaims("static", CARD.lower(), 1, 2**32 - 1, bytes(8))
    parsed = parse_token(issue_token(static, "A", key))
    assert parsed.claims.type == "static" and parsed.claims.ehc_id == CARD
    assert base64.b32decode(parsed.signed_part.split(b":")[2])[1] == 2


def test_only_qr_alphanumeric_characters(token):
    assert set(token) <= QR_ALPHANUMERIC
    assert "=" not in token


def test_every_kid_form_is_alphanumeric(key, claims):
    for kid in ["A", "0", "Z9" * 8]:
        tok = issue_token(claims, kid, key)
        assert set(tok) <= QR_ALPHANUMERIC and parse_token(tok).kid == kid


def _replace_part(token: str, index: int, value: str) -> str:
    parts = token.split(":")
    parts[index] = value
    return ":".join(parts)


def test_malformed_structure(token):
    cases = {
        "prefix": ["EHC2" + token[4:], "ehc1" + token[4:], "", CARD + ":1"],
        "field count": [token + ":X", token.rsplit(":", 1)[0]],
        "kid": [_replace_part(token, 1, "sc2025a"), _replace_part(token, 1, "A" * 17),
                _replace_part(token, 1, ""), _replace_part(token, 1, "SC-1")],
        "payload length": [_replace_part(token, 2, token.split(":")[2][:-1])],
        "payload base32": [_replace_part(token, 2, "1" + token.split(":")[2][1:]),
                           _replace_part(token, 2, token.split(":")[2].lower())],
        "signature length": [token + "A"],
        "not ASCII text": ["EHC1:卡:" + token[8:]],
    }
    for reason, tokens in cases.items():
        for bad in tokens:
            with pytest.raises(TokenMalformed) as info:
                parse_token(bad)
            assert info.value.reason == reason, bad


def test_non_canonical_signature_base32_is_rejected(token):
    # 103 characters carry 515 bits for 512; setting a spare bit spells the same bytes differently
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    other = alphabet[alphabet.index(last) ^ 1]
    sig = token.split(":")[3]
    assert base64.b32decode(sig[:-1] + other + "=") == base64.b32decode(sig + "=")
    with pytest.raises(TokenMalformed) as info:
        parse_token(token[:-1] + other)
    assert info.value.reason == "signature base32"


def test_wrong_version_and_type(key):
    good = struct.pack(">BB32sII8s", 1, 1, bytes.fromhex(CARD), 1, 2, bytes(8))
    for p, reason in [(b"\x02" + good[1:], "version"), (good[:1] + b"\x03" + good[2:], "type"),
                      (good[:1] + b"\x00" + good[2:], "type")]:
        with pytest.raises(TokenMalformed) as info:
            parse_token(_signed(key, p))
        assert info.value.reason == reason


def test_tampered_payload_fails_signature(token, key):
    payload = token.split(":")[2]
    # change the last iat/exp/nonce character: still valid base32, different claims
    changed = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    parsed = parse_token(_replace_part(token, 2, changed))
    assert not verify_token_signature(parsed, key.public_key)
    relabelled = parse_token(_replace_part(token, 1, "OTHER"))
    assert not verify_token_signature(relabelled, key.public_key)


@pytest.mark.parametrize(
    "change",
    [{"type": "temporary"}, {"ehc_id": CARD[:-1]}, {"iat": -1}, {"exp": 2**32}, {"nonce": b"1234567"}],
)
def test_issue_rejects_bad_claims(key, claims, change):
    bad = TokenClaims(**{**claims.__dict__, **change})
    with pytest.raises(ValueError):
        issue_token(bad, "K1", key)


def test_issue_rejects_bad_kid(key, claims):
    for kid in ["", "k1", "A" * 17, "A:B"]:
        with pytest.raises(ValueError):
            issue_token(claims, kid, key)


def _vendor_verify(token: str, jwk_x: str, jwk_y: str) -> dict | None:
    """What a terminal vendor writes from docs/terminal-vendors.md alone, with gmssl and the standard library."""
    prefix, kid, payload, sig = token.split(":")
    if prefix != "EHC1":
        return None

    def unb32(s):
        return base64.b32decode(s + "=" * (-len(s) % 8))

    def unb64(s):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    p, rs = unb32(payload), unb32(sig)
    verifier = CryptSM2(private_key=None, public_key="")
    verifier.public_key = (unb64(jwk_x) + unb64(jwk_y)).hex()  # after construction: it would lstrip("04") it
    if p[0] != 1 or not verifier.verify_with_sm3(rs.hex(), f"EHC1:{kid}:{payload}".encode()):
        return None
    return {"type": p[1], "ehc_id": p[2:34].hex().upper(), "iat": int.from_bytes(p[34:38], "big"),
            "exp": int.from_bytes(p[38:42], "big")}


def test_offline_verification_with_gmssl_only(token, key):
    # the public key as GET /ehc/keys publishes it: x and y base64url without padding
    x = base64.urlsafe_b64encode(key.public_key.x).decode().rstrip("=")
    y = base64.urlsafe_b64encode(key.public_key.y).decode().rstrip("=")
    expected = {"type": 1, "ehc_id": CARD, "iat": 1_700_000_000, "exp": 1_700_000_060}
    assert _vendor_verify(token, x, y) == expected
    other = SM2PrivateKey.generate().public_key
    ox = base64.urlsafe_b64encode(other.x).decode().rstrip("=")
    oy = base64.urlsafe_b64encode(other.y).decode().rstrip("=")
    assert _vendor_verify(token, ox, oy) is None
    payload = token.split(":")[2]
    tampered = _replace_part(token, 2, payload[:-1] + ("A" if payload[-1] != "A" else "B"))
    assert _vendor_verify(tampered, x, y) is None


def test_legacy_static_codes():
    assert parse_legacy_static(CARD + ":1") == CARD
    assert parse_legacy_static(CARD.lower() + ":1:12345678901") == CARD
    assert parse_legacy_static(CARD + ":1\r\n") == CARD
    not_static = [CARD + ":0", CARD + ":2", CARD + ":10", CARD[:-1] + ":1", CARD, "EHC1:K:X:Y", "",
                  "G" * 64 + ":1"]
    for code in not_static:
        assert parse_legacy_static(code) is None, code
    assert re.fullmatch(r"[0-9A-F]{64}", parse_legacy_static(CARD.lower() + ":1") or "")
