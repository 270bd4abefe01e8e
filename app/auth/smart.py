"""SMART discovery: /.well-known/smart-configuration and OpenID Connect discovery (both also under /fhir), and
the CapabilityStatement security section with the oauth-uris extension (SMART App Launch 2.0, "Conformance").

URLs are absolute: from EHC_BASE_URL when set, else from the request's host.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from app.auth.scopes import OTHER_SCOPES

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
CAPABILITIES = [
    "launch-standalone",
    "launch-ehr",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-standalone-patient",
    "context-ehr-patient",
    "context-ehr-encounter",  # /oauth/launch takes an encounter; the token names it
    "permission-patient",
    "permission-user",
    "permission-offline",
    "permission-v1",
    "permission-v2",
    "sso-openid-connect",
    "authorize-post",
]

bp = Blueprint("ehc_smart", __name__)


def fhir_base(svc: Any) -> str:
    """The FHIR base URL clients use (the `aud` of their requests)."""
    if svc.settings.base_url:
        return str(svc.settings.base_url).rstrip("/")
    return request.host_url.rstrip("/") + "/fhir"


def secure_cookies() -> bool:
    """Whether this request's cookies are Secure: it came over https (directly, or through a trusted proxy that
    says so, EHC_TRUSTED_PROXIES), or the server's public address is https."""
    from flask import current_app, request

    base = current_app.extensions["ehc"].settings.base_url or ""
    return request.is_secure or base.startswith("https://")


def server_root(svc: Any) -> str:
    """Where /oauth/* is: the FHIR base without its trailing /fhir; for a base that does not end in /fhir
    (a proxy that maps the FHIR API to the root, or to another path), the origin of the base URL."""
    base = fhir_base(svc)
    if base.endswith("/fhir"):
        return base[: -len("/fhir")]
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else base


def endpoints(svc: Any) -> dict[str, str]:
    root = server_root(svc)
    return {
        "authorize": f"{root}/oauth/authorize",
        "token": f"{root}/oauth/token",
        "introspect": f"{root}/oauth/introspect",
        "revoke": f"{root}/oauth/revoke",
        "jwks": f"{root}/oauth/jwks",
    }


# Scopes granted as words that do nothing here: no standalone encounter picker (launch/encounter), and refresh
# tokens only for offline_access (online_access would ask for one while the user is online).
UNOFFERED_SCOPES = frozenset({"launch/encounter", "online_access"})


def smart_configuration(svc: Any) -> dict[str, Any]:
    urls = endpoints(svc)
    return {
        "issuer": fhir_base(svc),
        "jwks_uri": urls["jwks"],
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "introspection_endpoint": urls["introspect"],
        "revocation_endpoint": urls["revoke"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": sorted(OTHER_SCOPES - UNOFFERED_SCOPES)
        + [f"{c}/*.{p}" for p in ("cruds", "read") for c in ("patient", "user", "system")],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def openid_configuration(svc: Any) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 for the issuer `{base}/fhir` (`sso-openid-connect` in the SMART
    capabilities): where a relying party finds the keys that sign id_tokens and what those hold."""
    conf = smart_configuration(svc)
    keep = ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint", "grant_types_supported",
            "token_endpoint_auth_methods_supported", "token_endpoint_auth_signing_alg_values_supported",
            "id_token_signing_alg_values_supported", "scopes_supported", "response_types_supported",
            "code_challenge_methods_supported")
    return {**{k: conf[k] for k in keep}, "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", "nonce", "fhirUser"]}


def capability_security(svc: Any) -> dict[str, Any]:
    urls = endpoints(svc)
    return {
        "cors": True,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}], "text": "OAuth2 using SMART-on-FHIR profile"}],
        "description": "SMART App Launch 2.0 and SMART Backend Services "
                       "(see /.well-known/smart-configuration)",
        "extension": [{
            "url": OAUTH_URIS,
            "extension": [{"url": name, "valueUri": urls[key]} for name, key in
                          (("authorize", "authorize"), ("token", "token"), ("introspect", "introspect"),
                           ("revoke", "revoke"))],
        }],
    }


def _svc() -> Any:
    from flask import current_app

    return current_app.extensions["ehc"]


def _discovery(document: dict[str, Any]) -> ResponseReturnValue:
    """A discovery document: public, and cacheable for a few minutes."""
    resp = jsonify(document)
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@bp.route("/.well-known/smart-configuration", methods=["GET"])
@bp.route("/fhir/.well-known/smart-configuration", methods=["GET"])
def well_known() -> ResponseReturnValue:
    return _discovery(smart_configuration(_svc()))


@bp.route("/.well-known/openid-configuration", methods=["GET"])
@bp.route("/fhir/.well-known/openid-configuration", methods=["GET"])
def openid_discovery() -> ResponseReturnValue:
    return _discovery(openid_configuration(_svc()))


def refresh_capability(svc: Any) -> None:
    """Before /fhir/metadata: the security section with this request's absolute URLs (when no
    EHC_BASE_URL fixes them once)."""
    if svc.settings.base_url and "capability_security" in svc.extensions:
        return
    svc.extensions["capability_security"] = capability_security(svc)
