"""The signed requester assertion (header X-EHC-Requester): who originally asked, carried across nodes.

A JWT (ES384, the sending node's key) with
    iss "node-<province>", aud <the receiving node's FHIR base>, iat, exp (at most MAX_LIFETIME s), jti,
    ehc_req {client_id, organization, province, purpose, scopes}
When the national node forwards a province's request it signs an envelope of the same form, with
    ehc_origin {province, assertion (the province's own JWT, unchanged), jwk (that province's public key)}
so the home node checks two signatures: the national node's (a registered peer) on the envelope, vouching for
the origin's key, and the origin's on the requester. Pure: no Flask, no database (jti replay is the caller's).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from app.federation.keys import ALG

HEADER = "X-EHC-Requester"
MAX_LIFETIME = 120
LEEWAY = 30


@dataclass
class Requester:
    client_id: str | None
    organization: str | None
    province: str | None
    purpose: str | None
    scopes: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> Requester:
        if not isinstance(data, dict):
            raise AssertionInvalid("the assertion carries no requester (ehc_req)")
        scopes = data.get("scopes")
        return cls(_opt(data.get("client_id")), _opt(data.get("organization")), _opt(data.get("province")),
                   _opt(data.get("purpose")), [str(s) for s in scopes] if isinstance(scopes, list) else [])


class AssertionInvalid(ValueError):
    pass


def _opt(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and str(value) else None


def sign(key: ECKey, issuer_province: str, audience: str, requester: Requester,
         origin: dict[str, Any] | None = None, lifetime: int = 60) -> str:
    t = int(time.time())
    claims: dict[str, Any] = {"iss": f"node-{issuer_province}", "aud": audience.rstrip("/"), "iat": t,
                              "exp": t + lifetime, "jti": uuid.uuid4().hex, "ehc_req": asdict(requester)}
    if origin is not None:
        claims["ehc_origin"] = origin
    return jwt.encode({"alg": ALG, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[ALG])


def verify(assertion: str, jwks: dict[str, Any], issuer: str, audiences: set[str]) -> dict[str, Any]:
    """The claims of an assertion signed by one of `jwks`, issued by `issuer` to one of `audiences`, live now."""
    try:
        token = jwt.decode(assertion, KeySet.import_key_set(jwks), algorithms=[ALG])  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as err:
        raise AssertionInvalid(f"the requester assertion's signature does not verify ({err})") from None
    claims = dict(token.claims)
    t = int(time.time())
    if claims.get("iss") != issuer:
        raise AssertionInvalid(f"the requester assertion is issued by {claims.get('iss')!r}, not {issuer!r}")
    if str(claims.get("aud", "")).rstrip("/") not in {a.rstrip("/") for a in audiences}:
        raise AssertionInvalid(f"the requester assertion is addressed to {claims.get('aud')!r}, not this node")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise AssertionInvalid("the requester assertion needs iat and exp")
    if exp < t - LEEWAY:
        raise AssertionInvalid("the requester assertion has expired")
    if exp - iat > MAX_LIFETIME or iat > t + LEEWAY:
        raise AssertionInvalid(f"a requester assertion may live at most {MAX_LIFETIME} s")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise AssertionInvalid("the requester assertion needs a jti")
    return claims


def verify_origin(envelope: dict[str, Any], audiences: set[str]) -> tuple[str, dict[str, Any]]:
    """(origin province, origin claims) of a forwarded envelope already verified as the national node's."""
    origin = envelope.get("ehc_origin")
    if not isinstance(origin, dict) or not isinstance(origin.get("province"), str):
        raise AssertionInvalid("the forwarded assertion names no origin node")
    province = origin["province"]
    jwk = origin.get("jwk")
    if not isinstance(jwk, dict) or not isinstance(origin.get("assertion"), str):
        raise AssertionInvalid("the forwarded assertion carries no origin assertion and key")
    try:
        ECKey.import_key(jwk)
    except (JoseError, ValueError, TypeError) as err:
        raise AssertionInvalid(f"the origin key cannot be read ({err})") from None
    inner = verify(origin["assertion"], {"keys": [jwk]}, f"node-{province}", audiences)
    if inner.get("ehc_req") != envelope.get("ehc_req"):
        raise AssertionInvalid("the forwarded requester differs from the one the origin node signed")
    return province, inner
