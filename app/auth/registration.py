"""Registering clients (operators, `ehc clients add`): scopes checked against SMART syntax, a province
code, an optional Organization, redirect URIs for apps, a public JWKS for private_key_jwt, and a random
secret for confidential clients without a JWKS (only its SHA-256 is stored; the secret is shown once). A
client registered with a JWKS authenticates with signed assertions only: it gets no secret that could leak.
A resource server (`resource_server`) may introspect the tokens of other clients."""

from __future__ import annotations

import re
import secrets
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from app.auth.models import AuthStore, Client, digest
from app.auth.scopes import ScopeError, parse_scopes

PROVINCES = {"00", "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
             "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65",
             "71", "81", "82"}
ALLOWED_ALGS = {"RS384", "ES384"}


def check_jwks(jwks: dict[str, Any]) -> dict[str, Any]:
    """A public JWK Set with RSA or P-384 EC keys; ValueError otherwise."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError("the JWKS must be a JSON object with a non-empty 'keys' array")
    for k in keys:
        if "d" in k:
            raise ValueError("the JWKS holds a private key; register the public keys only")
        if k.get("kty") not in ("RSA", "EC") or (k.get("kty") == "EC" and k.get("crv") != "P-384"):
            raise ValueError("keys must be RSA (RS384) or EC P-384 (ES384)")
        if k.get("alg") and k["alg"] not in ALLOWED_ALGS:
            raise ValueError(f"key alg {k['alg']!r} is not RS384 or ES384")
    try:
        KeySet.import_key_set(jwks)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError) as err:
        raise ValueError(f"the JWKS cannot be read: {err}") from None
    return {"keys": keys}


def register_client(store: AuthStore, *, name: str, scopes: str, province: str, organization: str | None = None,
                    jwks: dict[str, Any] | None = None, redirect_uris: list[str] | tuple[str, ...] = (),
                    public: bool = False, break_glass: bool = False,
                    resource_server: bool = False) -> dict[str, Any]:
    """Store a new client; returns what the operator needs (client_id, and client_secret when confidential)."""
    if province not in PROVINCES:
        raise ValueError(f"province must be a GB/T 2260 province code (or 00); got {province!r}")
    try:
        parsed = parse_scopes(scopes, strict=True)
    except ScopeError as err:
        raise ValueError(str(err)) from None
    if not parsed.words:
        raise ValueError("at least one scope is required")
    for uri in redirect_uris:
        if not re.match(r"^(https://|http://(127\.0\.0\.1|localhost)(:\d+)?/)", uri):
            raise ValueError(f"redirect URI {uri!r} must be https (or http on localhost)")
    if public:
        if jwks:
            raise ValueError("a public client has no keys; drop --jwks or --public")
        if not redirect_uris:
            raise ValueError("a public client needs a redirect URI")
        if any(s.context != "patient" for s in parsed.resource):
            raise ValueError("a public client may only be registered with patient/ scopes")
        if break_glass:
            raise ValueError("break-the-glass is for confidential clients")
        if resource_server:
            raise ValueError("a resource server is a confidential client; drop --public")
    client_id = secrets.token_urlsafe(18)
    secret = None if public or jwks else secrets.token_urlsafe(32)
    doc = Client(client_id=client_id, name=name, secret_hash=digest(secret) if secret else None, public=public,
                 scopes=" ".join(parsed.words), redirect_uris=list(redirect_uris),
                 jwks=check_jwks(jwks) if jwks else {}, province=province, organization=organization,
                 break_glass=break_glass, resource_server=resource_server)
    store.save(doc, insert=True)
    out: dict[str, Any] = {"client_id": client_id, "name": name, "scopes": doc.scopes, "province": province,
                           "organization": organization, "redirect_uris": list(redirect_uris),
                           "public": public, "break_glass": break_glass, "resource_server": resource_server,
                           "token_endpoint_auth_methods": (["none"] if public else
                                                           ["private_key_jwt"] if jwks else
                                                           ["client_secret_basic"])}
    if secret:
        out["client_secret"] = secret
    return out
