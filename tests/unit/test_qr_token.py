"""The EHC1 QR token of docs/terminal-vendors.md: encoding, strict parsing, signatures, offline verification
by a vendor."""

import base64
import re
import struct
from typing import Any

import pytest
from gmssl.sm2 import CryptSM2

from app.crypto import SM2PrivateKey
from app.ehc.token import (
    CLOCK_SKEW,
    TokenClaims,
    TokenMalformed,
    check_times,
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


# -- times: app.ehc.token.check_times, and the offline example of docs/terminal-vendors.md that spells it out ----

NOW = 1_800_000_000
YEAR = 365 * 86400


def _claims(kind: str, iat: object, exp: object) -> TokenClaims:
    return TokenClaims(kind, CARD, iat, exp, bytes(8))  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "iat", "exp", "reason"), [
    ("dynamic", NOW, NOW + 60, None),
    ("dynamic", NOW, NOW + 300, None),
    ("static", NOW, NOW + YEAR, None),
    ("dynamic", NOW + CLOCK_SKEW, NOW + CLOCK_SKEW + 60, None),  # the issuer's clock ahead, within the allowance
    ("dynamic", NOW + CLOCK_SKEW + 1, NOW + CLOCK_SKEW + 61, "issued-in-future"),
    ("static", NOW + 86400, NOW + 2 * 86400, "issued-in-future"),
    ("dynamic", NOW, NOW + 301, "bad-lifetime"),
    ("static", NOW, NOW + YEAR + 1, "bad-lifetime"),
    ("dynamic", 0, 2**32 - 1, "bad-lifetime"),
    ("static", 0, NOW + 60, "bad-lifetime"),
    ("dynamic", NOW, NOW, "bad-lifetime"),
    ("static", NOW, NOW - 1, "bad-lifetime"),
    ("dynamic", 2**32 - 1, 0, "bad-lifetime"),
    ("dynamic", NOW + 3600, NOW + 5000, "bad-lifetime"),  # too long beats in the future
    ("dynamic", NOW - 400, NOW - 100, "expired"),
    ("dynamic", NOW - 60, NOW, "expired"),
    ("dynamic", NOW - 1000, NOW - 10, "bad-lifetime"),  # too long beats expired
    ("dynamic", -1, NOW + 60, "malformed"),
    ("dynamic", NOW, 2**32, "malformed"),
    ("dynamic", str(NOW), NOW + 60, "malformed"),
    ("dynamic", NOW, float(NOW + 60), "malformed"),
    ("dynamic", True, NOW + 60, "malformed"),
    ("dynamic", None, NOW + 60, "malformed"),
    ("weekly", NOW, NOW + 60, "malformed"),
])
def test_check_times(kind, iat, exp, reason):
    assert check_times(_claims(kind, iat, exp), NOW) == reason


def test_check_times_within_the_keys_signing_period():
    nbf, retired, key_exp = NOW - 86400, NOW - 3600, NOW + YEAR
    ok = {"key_nbf": nbf, "key_exp": key_exp}
    assert check_times(_claims("static", NOW - 7200, NOW + 3600), NOW, **ok, key_retired=retired) is None
    assert check_times(_claims("static", nbf - CLOCK_SKEW, NOW + 3600), NOW, **ok) is None
    assert check_times(_claims("static", nbf - CLOCK_SKEW - 1, NOW + 3600), NOW, **ok) == "bad-lifetime"
    assert check_times(_claims("static", NOW, key_exp + CLOCK_SKEW + 1), NOW, **ok) == "bad-lifetime"
    assert check_times(_claims("static", retired + CLOCK_SKEW, NOW + 60), NOW, **ok, key_retired=retired) is None
    assert check_times(_claims("static", retired + CLOCK_SKEW + 1, NOW + 60), NOW, **ok,
                       key_retired=retired) == "bad-lifetime"
    assert check_times(_claims("dynamic", NOW, NOW + 60), NOW, **ok, key_retired=retired) == "bad-lifetime"
    assert check_times(_claims("static", NOW, NOW + 60), NOW, **ok, key_retired=retired) == "bad-lifetime"
    # an expired token says so, whatever its key
    assert check_times(_claims("static", nbf - 7200, nbf - 3600), NOW, **ok) == "expired"


def _offline_example() -> Any:
    """verify_offline() of docs/terminal-vendors.md, as a vendor would save it."""
    from tests.docs_examples import ROOT, blocks

    block = next(b for b in blocks(ROOT / "docs" / "terminal-vendors.md") if b.file == "verify_offline.py")
    namespace: dict[str, Any] = {"__name__": "verify_offline"}
    exec(compile(block.text, "verify_offline.py", "exec"), namespace)  # noqa: S102 - the documentation's code
    return namespace["verify_offline"]


def _server_rule(token: str, key: SM2PrivateKey, kid: str, nbf: int, key_exp: int, now: int) -> str | None:
    """The checks of CardService.verify before the card and the nonce, in its order."""
    try:
        parsed = parse_token(token)
    except TokenMalformed:
        return "malformed"
    if parsed.kid != kid or now >= key_exp:
        return "unknown-key"
    if not verify_token_signature(parsed, key.public_key):
        return "bad-signature"
    return check_times(parsed.claims, now, key_nbf=nbf, key_exp=key_exp)


def test_the_offline_example_applies_the_servers_rule_on_times(key):
    verify_offline = _offline_example()
    kid, nbf, key_exp = "SC2025A", NOW - 86400, NOW + YEAR
    jwk = {"kid": kid, "kty": "EC", "crv": "SM2", "alg": "SM2SM3", "x": _b64url(key.public_key.x),
           "y": _b64url(key.public_key.y), "nbf": nbf, "exp": key_exp, "province": "11"}
    cases = [("dynamic", NOW, NOW + 60), ("static", NOW, NOW + YEAR), ("dynamic", NOW + 3600, NOW + 3660),
             ("dynamic", NOW + CLOCK_SKEW, NOW + CLOCK_SKEW + 30), ("static", NOW + 86400, NOW + 2 * 86400),
             ("dynamic", NOW, NOW + 301), ("static", NOW, NOW + YEAR + 1), ("dynamic", 0, 2**32 - 1),
             ("dynamic", NOW, NOW), ("static", NOW, NOW - 1), ("dynamic", NOW - 400, NOW - 100),
             ("dynamic", NOW - 1000, NOW - 10), ("static", nbf - 7200, NOW + 3600),
             ("static", NOW - 60, key_exp + 3600)]
    seen = set()
    for kind, iat, exp in cases:
        token = issue_token(TokenClaims(kind, CARD, iat, exp, bytes(8)), kid, key)
        expected = _server_rule(token, key, kid, nbf, key_exp, NOW)
        out = verify_offline(token, {"keys": [jwk]}, {"cards": []}, now=NOW)
        assert out.get("reason") == expected and out["valid"] is (expected is None), (kind, iat, exp, out)
        seen.add(expected)
    assert seen == {None, "issued-in-future", "bad-lifetime", "expired"}
    good = issue_token(TokenClaims("dynamic", CARD, NOW, NOW + 60, bytes(8)), kid, key)
    for text in (good[:-1], "EHC1:X", good.replace(kid, "OTHER"), good[:-3] + "AAA"):
        assert verify_offline(text, {"keys": [jwk]}, {"cards": []}, now=NOW)["reason"] == \
            _server_rule(text, key, kid, nbf, key_exp, NOW), text
    for p in (struct.pack(">BB32sII8s", 2, 1, bytes.fromhex(CARD), NOW, NOW + 60, bytes(8)),
              struct.pack(">BB32sII8s", 1, 3, bytes.fromhex(CARD), NOW, NOW + 60, bytes(8))):
        signed = _signed(key, p, kid)
        assert verify_offline(signed, {"keys": [jwk]}, {"cards": []}, now=NOW)["reason"] == "malformed"
        assert _server_rule(signed, key, kid, nbf, key_exp, NOW) == "malformed"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
