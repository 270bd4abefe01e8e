"""The signed QR token of the electronic health card, exactly as docs/terminal-vendors.md specifies it.

    token     = "EHC1:" kid ":" payload ":" signature
    kid       = 1*16(A-Z / 0-9)
    payload   = BASE32(P)        ; RFC 4648 §6 alphabet, upper case, no "=" padding
    P         = version(1)=1 | type(1: 1 dynamic, 2 static) | ehc-id(32) | iat(4) | exp(4) | nonce(8)
    signature = BASE32(r | s)    ; SM2, SM3 digest, default user ID, over ASCII("EHC1:" kid ":" payload)

Every character is in the QR alphanumeric set (0-9 A-Z and " $%*+-./:"), so the code stays small. P is 50
bytes (exactly 80 base32 characters) and the signature 64 bytes (103 characters). Parsing accepts only the
canonical base32 text, so one signed token has exactly one spelling.

Also here, the one rule on a token's times (`check_times`) that $ehc-verify applies and that the offline
verification of docs/terminal-vendors.md ("Times") spells out for terminals, and the words a verification
answers with (`VERIFY_REASONS`).

Also here: today's static code `<64-hex card ID>:1[:...]` (docs/mpi.md), accepted for the
terminals already in hospitals.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass

from app.crypto import SM2PrivateKey, SM2PublicKey

PREFIX = "EHC1"
VERSION = 1
TYPES = {"dynamic": 1, "static": 2}
_TYPE_NAMES = {v: k for k, v in TYPES.items()}
_KID = re.compile(r"[A-Z0-9]{1,16}")
_P = struct.Struct(">BB32sII8s")  # version, type, ehc-id, iat, exp, nonce
_PAYLOAD_CHARS = 80
_SIGNATURE_CHARS = 103
_LEGACY = re.compile(r"([0-9A-Fa-f]{64}):([01])(:.*)?", re.DOTALL)

MAX_LIFETIME = {"dynamic": 300, "static": 365 * 86400}  # exp - iat, seconds: the longest the issuer gives
CLOCK_SKEW = 60  # seconds an issuer's clock may be ahead of the verifier's (iat), or a key's period be off
_U32 = 2**32

# What a verification that is not valid answers (`reason` of $ehc-verify, the offline example's), in the order
# of the checks: the token's form, its key, its signature, its times, the card, the nonce.
VERIFY_REASONS = ("malformed", "unknown-key", "bad-signature", "bad-lifetime", "issued-in-future", "expired",
                  "suspended", "cancelled", "unknown-card", "replayed")


class TokenMalformed(ValueError):
    """The text is not a well-formed EHC1 token; `reason` says which rule it breaks."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed EHC token: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class TokenClaims:
    type: str  # "dynamic" | "static"
    ehc_id: str  # 64 upper-case hex
    iat: int  # unix seconds
    exp: int
    nonce: bytes  # 8 bytes


@dataclass(frozen=True)
class ParsedToken:
    kid: str
    claims: TokenClaims
    signed_part: bytes  # ASCII of "EHC1:" kid ":" payload
    signature: bytes  # raw r | s


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=")


def _b32decode(text: str, chars: int, what: str) -> bytes:
    if len(text) != chars:
        raise TokenMalformed(f"{what} length")
    try:
        data = base64.b32decode(text + "=" * (-len(text) % 8), casefold=False)
    except (binascii.Error, ValueError):
        raise TokenMalformed(f"{what} base32") from None
    if _b32encode(data) != text:  # unused trailing bits set: a second spelling of the same bytes
        raise TokenMalformed(f"{what} base32")
    return data


def issue_token(claims: TokenClaims, kid: str, key: SM2PrivateKey) -> str:
    """Encode and sign; ValueError for claims that cannot be encoded."""
    if not _KID.fullmatch(kid):
        raise ValueError("kid must be 1 to 16 of A-Z 0-9")
    if claims.type not in TYPES:
        raise ValueError("token type must be 'dynamic' or 'static'")
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", claims.ehc_id):
        raise ValueError("ehc_id must be 64 hex characters")
    if len(claims.nonce) != 8:
        raise ValueError("nonce must be 8 bytes")
    if not (0 <= claims.iat < 2**32 and 0 <= claims.exp < 2**32):
        raise ValueError("iat and exp must fit in 32 unsigned bits")
    ehc_id = bytes.fromhex(claims.ehc_id)
    p = _P.pack(VERSION, TYPES[claims.type], ehc_id, claims.iat, claims.exp, claims.nonce)
    signed_part = f"{PREFIX}:{kid}:{_b32encode(p)}"
    signature = key.sign(signed_part.encode("ascii"))
    return f"{signed_part}:{_b32encode(signature)}"


def parse_token(token: str) -> ParsedToken:
    """Split and decode a token without checking its signature or times; TokenMalformed if it is not one."""
    if not isinstance(token, str) or not token.isascii():
        raise TokenMalformed("not ASCII text")
    parts = token.split(":")
    if parts[0] != PREFIX:
        raise TokenMalformed("prefix")
    if len(parts) != 4:
        raise TokenMalformed("field count")
    _, kid, payload, sig_text = parts
    if not _KID.fullmatch(kid):
        raise TokenMalformed("kid")
    version, type_code, ehc_id, iat, exp, nonce = _P.unpack(_b32decode(payload, _PAYLOAD_CHARS, "payload"))
    signature = _b32decode(sig_text, _SIGNATURE_CHARS, "signature")
    if version != VERSION:
        raise TokenMalformed("version")
    if type_code not in _TYPE_NAMES:
        raise TokenMalformed("type")
    claims = TokenClaims(_TYPE_NAMES[type_code], ehc_id.hex().upper(), iat, exp, nonce)
    return ParsedToken(kid, claims, f"{PREFIX}:{kid}:{payload}".encode("ascii"), signature)


def verify_token_signature(parsed: ParsedToken, public_key: SM2PublicKey) -> bool:
    """True when the token was signed by the key; times, status and replay are the caller's to check."""
    return public_key.verify(parsed.signed_part, parsed.signature)


def check_times(claims: TokenClaims, now: int, *, key_nbf: int | None = None, key_exp: int | None = None,
                key_retired: int | None = None) -> str | None:
    """Why a token whose signature verified is refused for its times at `now` (unix seconds), else None.

    - malformed: iat or exp not an integer of 32 unsigned bits, or a type of no lifetime (cannot come out of
      parse_token; here so that no caller gets a traceback);
    - bad-lifetime: exp at or before iat, or exp - iat longer than its type allows (MAX_LIFETIME: dynamic 300 s,
      static one year), whatever the clock says: no issuer gives such a token, so its key was misused;
    - issued-in-future: iat more than CLOCK_SKEW after now;
    - expired: now at or after exp;
    - bad-lifetime, for a token that would still be valid: dated before its key's nbf or after the key was
      retired (a key signs only while current: a token dated after that was minted with a key that should no
      longer sign, e.g. one rotated because it leaked), or outliving the key (exp after the key's exp), each with
      CLOCK_SKEW allowed. The key's dates are checked when given (a terminal knows nbf and exp from /ehc/keys;
      only the issuing node knows when its key was retired).

    The order is the order of the checks: a token both too long and expired is `bad-lifetime`, but an expired one
    outside its key's period is just `expired` (it is refused either way).
    """
    iat, exp = claims.iat, claims.exp
    if not all(type(t) is int and 0 <= t < _U32 for t in (iat, exp)) or claims.type not in MAX_LIFETIME:
        return "malformed"
    if exp <= iat or exp - iat > MAX_LIFETIME[claims.type]:
        return "bad-lifetime"
    if iat > now + CLOCK_SKEW:
        return "issued-in-future"
    if now >= exp:
        return "expired"
    if key_nbf is not None and iat < key_nbf - CLOCK_SKEW:
        return "bad-lifetime"
    if key_retired is not None and iat > key_retired + CLOCK_SKEW:
        return "bad-lifetime"
    if key_exp is not None and exp > key_exp + CLOCK_SKEW:
        return "bad-lifetime"
    return None


def parse_legacy_static(code: str) -> str | None:
    """The card ID (upper case) of a legacy static code `<64-hex>:1[:...]`, else None.

    Legacy dynamic codes (`<64-hex>:0`) also give None: they carry no signature or time, so nothing about
    them can be checked and $ehc-verify treats them as malformed.
    """
    m = _LEGACY.fullmatch(code.strip()) if isinstance(code, str) else None
    if m is None or m.group(2) != "1":
        return None
    return m.group(1).upper()
