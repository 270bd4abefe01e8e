"""The OAuth2 authorization server (authlib), configured for SMART App Launch 2.0 and Backend Services.

- Authorization code (RFC 6749 §4.1) with PKCE (RFC 7636), S256 only and required of every client;
  `aud` must be this server's FHIR base. Refresh tokens (rotated) only when offline_access is granted.
  EHR launch: the `launch` scope goes with a `launch` parameter naming a context an EHR created
  (app.auth.launch); it is taken once, when the code is issued, and gives the token its patient/encounter.
- Client credentials (RFC 6749 §4.4) with private_key_jwt (RFC 7523 client assertions, RS384 or ES384,
  verified against the JWKS given at registration; lifetime at most 5 minutes; each jti accepted once)
  or client_secret_basic for confidential operator clients. Tokens live 300 s, with no refresh token.
- Refresh tokens are used once: the first use claims the token atomically (app.auth.models.AuthStore.claim);
  every token descended from one authorization code is a "family", and presenting a spent refresh token
  again revokes the whole family (OAuth 2.0 Security BCP, refresh token rotation with reuse detection).
- Introspection (RFC 7662) answers the token's own client and registered resource servers; any other client
  gets {"active": false}. Revocation (RFC 7009) of a refresh token revokes its family: every access token
  issued from the same grant, at once in this process and within the token cache's 2 s in any other.
Token values are random; only their SHA-256 is stored. Token responses carry `patient` (launch context)
and an RS256 `id_token` for `openid fhirUser`.
"""

from __future__ import annotations

import hmac
import threading
import time
from typing import Any

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import g, has_request_context
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pymongo.errors import BulkWriteError

from app.auth.keys import AuthKeys
from app.auth.launch import peek_launch, take_launch
from app.auth.models import (
    AuthorizationCode,
    AuthStore,
    Client,
    Launch,
    LoginSession,
    Token,
    TokenFamily,
    UsedAssertion,
    digest,
    now,
)
from app.auth.scopes import narrow, parse_scopes
from app.auth.smart import endpoints, fhir_base

ACCESS_TTL = 3600
BACKEND_TTL = 300  # SMART Backend Services: at most five minutes
REFRESH_TTL = 30 * 24 * 3600
CODE_TTL = 300
ASSERTION_MAX_LIFETIME = 300
CLIENT_CACHE_SECONDS = 5.0


class SmartClient(ClientMixin):
    """authlib's view of a registered client."""

    def __init__(self, doc: Client) -> None:
        self.doc = doc
        self.client_id = doc.client_id
        self._keys: KeySet | None = None

    def get_client_id(self) -> str:
        return str(self.client_id)

    def get_default_redirect_uri(self) -> str | None:
        return self.doc.redirect_uris[0] if self.doc.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """At the authorization endpoint: residents approve patient/ scopes and the launch words only."""
        return narrow(scope, self.doc.scopes, contexts=("patient",)) or None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.doc.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return bool(self.doc.secret_hash) and hmac.compare_digest(self.doc.secret_hash, digest(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.doc.public:
            return method == "none"
        if method == "client_secret_basic":
            return bool(self.doc.secret_hash)
        if method == "private_key_jwt":
            return bool(self.doc.jwks)
        return False

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and bool(self.doc.redirect_uris)

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type in ("authorization_code", "refresh_token"):
            return bool(self.doc.redirect_uris)
        if grant_type == "client_credentials":
            return not self.doc.public
        return False

    def key_set(self) -> KeySet:
        if self._keys is None:
            self._keys = KeySet.import_key_set(self.doc.jwks)
        return self._keys


class StoredToken(TokenMixin):
    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw

    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.raw.get("client_id"))

    def get_scope(self) -> str:
        return str(self.raw.get("scope") or "")

    def get_expires_in(self) -> int:
        return int(self.raw["expires_at"]) - int(self.raw.get("issued_at", 0))

    def is_expired(self) -> bool:
        return int(self.raw["expires_at"]) <= now()

    def is_revoked(self) -> bool:
        return bool(self.raw.get("revoked") or self.raw.get("spent_at"))

    def get_user(self) -> dict[str, Any] | None:
        return _user_of(self.raw)


class StoredCode(AuthorizationCodeMixin):
    def __init__(self, doc: AuthorizationCode) -> None:
        self.doc = doc
        self.code_challenge = doc.code_challenge
        self.code_challenge_method = doc.code_challenge_method
        self.nonce = doc.nonce

    def get_redirect_uri(self) -> str | None:
        return str(self.doc.redirect_uri) if self.doc.redirect_uri else None

    def get_scope(self) -> str:
        return str(self.doc.scope or "")


def _user_of(raw: dict[str, Any]) -> dict[str, Any] | None:
    if not raw.get("account"):
        return None
    return {"account": raw["account"], "patient": raw.get("patient"), "encounter": raw.get("encounter"),
            "fhir_user": raw.get("fhir_user")}


# -- grants ------------------------------------------------------------------------------------------------

class S256Only(CodeChallenge):
    """PKCE required of every client at the authorization endpoint; only S256 (plain is refused)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 (plain is not accepted)")
        super().validate_code_challenge(grant, redirect_uri)


class SmartAuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        aud = (self.request.payload.data.get("aud") or "").rstrip("/")
        expected = fhir_base(self.server.svc)
        if aud != expected:
            raise InvalidRequestError(f"aud must be this server's FHIR base URL {expected}",
                                      redirect_uri=redirect_uri)
        self.ehc_launch = self.validate_launch(redirect_uri)
        return redirect_uri

    def validate_launch(self, redirect_uri: str) -> Launch | None:
        """EHR launch: the launch context named by the `launch` parameter (looked at, not yet used)."""
        launch_id = self.request.payload.data.get("launch")
        asked = parse_scopes(self.request.payload.scope).has("launch")
        if not launch_id and not asked:
            return None
        if not launch_id:
            raise InvalidRequestError("the launch scope needs a launch parameter (EHR launch)",
                                      redirect_uri=redirect_uri)
        if not asked:
            raise InvalidRequestError("a launch parameter needs the launch scope", redirect_uri=redirect_uri)
        client = self.request.client
        if not parse_scopes(client.doc.scopes).has("launch"):
            raise InvalidScopeError("this client is not registered for EHR launch (scope launch)",
                                    redirect_uri=redirect_uri)
        doc = peek_launch(self.server.store, launch_id)
        if doc is None or (doc.client_id and doc.client_id != client.client_id):
            raise InvalidRequestError("the launch is unknown, expired or already used", redirect_uri=redirect_uri)
        return doc

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        user = request.user or {}
        patient, encounter = user.get("patient"), None
        if getattr(self, "ehc_launch", None) is not None:
            launch = take_launch(self.server.store, data["launch"])  # used once, even if the code is not
            if launch is None or launch.patient != patient:
                raise InvalidRequestError("the launch is unknown, expired or already used",
                                          redirect_uri=request.payload.redirect_uri)
            encounter = launch.encounter
        self.server.store.save(AuthorizationCode(
            code_hash=digest(code), client_id=request.client.client_id,
            redirect_uri=request.payload.redirect_uri, scope=request.scope, account=user.get("account"),
            patient=patient, encounter=encounter, fhir_user=user.get("fhir_user"), nonce=data.get("nonce"),
            code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"), expires_at=now() + CODE_TTL),
            insert=True)

    def query_authorization_code(self, code: str, client: Any) -> StoredCode | None:
        # single use, even when what follows fails
        doc = self.server.store.take(AuthorizationCode, digest(code))
        if doc is None or doc.client_id != client.client_id or doc.expires_at <= now():
            return None
        return StoredCode(doc)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        return None  # already taken by query_authorization_code

    def authenticate_user(self, authorization_code: StoredCode) -> dict[str, Any] | None:
        d = authorization_code.doc
        if not d.account:
            return None
        return {"account": d.account, "patient": d.patient, "encounter": d.encounter, "fhir_user": d.fhir_user}


class SmartRefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: each refresh token is used once

    def validate_token_request(self) -> None:
        """The client, then the refresh token: its own, alive, asking no more than it was granted — and
        only then spent, by one atomic claim. A refresh token that was spent before is a replay (stolen,
        or used twice in parallel): the whole family is revoked."""
        client = self._validate_request_client()
        self.request.client = client
        value = self.request.form.get("refresh_token")
        if value is None:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        store: AuthStore = self.server.store
        key = digest(value)
        raw = store.token(key)
        if not raw or raw.get("kind") != "refresh" or raw.get("client_id") != client.client_id:
            raise InvalidGrantError()
        family = raw.get("family") or key
        if raw.get("spent_at"):
            store.revoke_family(family, "refresh token reused")
            raise InvalidGrantError("the refresh token was used before; every token of this grant is revoked")
        if raw.get("revoked") or raw["expires_at"] <= now():
            raise InvalidGrantError()
        token = StoredToken(raw)
        self._validate_token_scope(token)
        before = store.claim(Token, key, spent_at=now())
        if before is None or before.get("spent_at"):
            store.revoke_family(family, "refresh token reused")
            raise InvalidGrantError("the refresh token was used before; every token of this grant is revoked")
        self.request.refresh_token = token

    def authenticate_refresh_token(self, refresh_token: str) -> StoredToken | None:
        raise NotImplementedError("validate_token_request authenticates the refresh token")

    def authenticate_user(self, refresh_token: StoredToken) -> dict[str, Any] | None:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: StoredToken) -> None:
        self.server.store.forget(refresh_token.raw["_id"])  # spent already (claimed in validate_token_request)


class BackendServicesGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic"]


# -- client authentication -------------------------------------------------------------------------------

class PrivateKeyJWT(JWTBearerClientAssertion):
    """RFC 7523 client assertions as SMART Backend Services profiles them."""

    CLIENT_AUTH_METHOD = "private_key_jwt"
    ALGORITHMS = ["RS384", "ES384"]

    def __init__(self, server: SmartAuthorizationServer) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.server = server

    def get_audiences(self) -> list[str]:
        return [endpoints(self.server.svc)["token"]]

    def resolve_client_public_key(self, client: SmartClient) -> KeySet:
        return client.key_set()

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=self.ALGORITHMS)
        except JoseError as err:
            raise InvalidClientError(description=f"client assertion refused: {err.description}") from err
        self.verify_claims(token.claims)
        return dict(token.claims)

    def verify_claims(self, claims: Any) -> None:
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float):
            raise InvalidClientError(description="the client assertion needs an exp claim")
        if exp > now() + ASSERTION_MAX_LIFETIME + self.leeway or (
                isinstance(iat, int | float) and exp - iat > ASSERTION_MAX_LIFETIME):
            raise InvalidClientError(description="a client assertion may live at most 5 minutes")
        super().verify_claims(claims)

    def validate_jti(self, claims: Any, jti: str) -> bool:
        """Each jti once: inserting `_id` = client|jti twice fails. At the token endpoint the insert is
        deferred to store_token, which writes it together with the token (one round trip; a duplicate
        there is refused as a replay); the view records it anyway when the request fails on the way."""
        self.server.prune_assertions()
        marker = UsedAssertion(key=f"jti|{claims['sub']}|{jti}", expires_at=int(claims["exp"]) + self.leeway)
        if has_request_context() and getattr(g, "ehc_defer_jti", False):
            g.ehc_pending_jti = marker
            return True
        return self.server.store.insert_once(marker)


# -- introspection and revocation ------------------------------------------------------------------------

class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> StoredToken | None:
        raw = self.server.store.token(digest(token_string))
        return StoredToken(raw) if raw else None

    def check_permission(self, token: StoredToken, client: Any, request: Any) -> bool:
        """The token's own client, or a registered resource server; any other client is answered
        {"active": false}, as for an unknown token (RFC 7662 §2.2): it learns nothing of the token."""
        return bool(token.check_client(client) or client.doc.resource_server)

    def introspect_token(self, token: StoredToken) -> dict[str, Any]:
        raw = token.raw
        out: dict[str, Any] = {"active": True, "scope": raw.get("scope", ""), "client_id": raw["client_id"],
                               "exp": raw["expires_at"], "iat": raw.get("issued_at"),
                               "token_type": "Bearer" if raw["kind"] == "access" else "refresh_token",
                               "iss": fhir_base(self.server.svc)}
        if raw.get("account"):
            out["sub"] = raw["account"]
        if raw.get("patient"):
            out["patient"] = raw["patient"]
        if raw.get("encounter"):
            out["encounter"] = raw["encounter"]
        if raw.get("fhir_user"):
            out["fhirUser"] = raw["fhir_user"]
        return out


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> StoredToken | None:
        raw = self.server.store.raw(Token, digest(token_string))
        return StoredToken(raw) if raw else None

    def revoke_token(self, token: StoredToken, request: Any) -> None:
        """RFC 7009 §2.1: revoking a refresh token also revokes the access tokens based on the same grant —
        its family (those issued before it and any a concurrent refresh issues after)."""
        store: AuthStore = self.server.store
        raw = token.raw
        keys = [raw["_id"]] + (list(raw.get("children") or []) if raw.get("kind") == "refresh" else [])
        if raw.get("kind") == "refresh":
            store.revoke_family(raw.get("family") or raw["_id"], "refresh token revoked")
        for key in keys:
            store.set(Token, key, revoked=True)
        store.forget(*keys)


# -- the server --------------------------------------------------------------------------------------------

class SmartAuthorizationServer(AuthorizationServer):
    def __init__(self, svc: Any, store: AuthStore, keys: AuthKeys) -> None:
        super().__init__()
        self.svc, self.store, self.keys = svc, store, keys
        self._clients: dict[str, tuple[float, SmartClient]] = {}
        self._lock = threading.Lock()
        self._last_prune = 0.0
        self._query_client = self.lookup_client
        self._save_token = self.store_token
        self.register_token_generator("default", self.generate)
        self.register_grant(SmartAuthorizationCodeGrant, [S256Only(required=True)])
        self.register_grant(SmartRefreshTokenGrant)
        self.register_grant(BackendServicesGrant)
        self.register_client_auth_method("private_key_jwt", PrivateKeyJWT(self))
        self.register_endpoint(Introspection)
        self.register_endpoint(Revocation)

    def lookup_client(self, client_id: str) -> SmartClient | None:
        hit = self._clients.get(client_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        doc = self.store.get(Client, client_id)
        if doc is None or not doc.active:
            return None
        client = SmartClient(doc)
        with self._lock:
            self._clients[client_id] = (time.monotonic() + CLIENT_CACHE_SECONDS, client)
        return client

    def prune_assertions(self) -> None:
        """Used jtis are kept until their assertion expires; sweep them now and then."""
        if time.monotonic() - self._last_prune < 600:
            return
        self._last_prune = time.monotonic()
        # the same sweep drops expired tokens (they share the collection), and revoked families none of whose
        # tokens can still be alive
        self.store.collection(UsedAssertion).delete_many({"expires_at": {"$lt": now() - 3600}})
        self.store.collection(TokenFamily).delete_many({"expires_at": {"$lt": now()}})
        self.store.collection(LoginSession).delete_many({"expires_at": {"$lt": now()}})

    def generate(self, grant_type: str, client: SmartClient, user: Any = None, scope: str | None = None,
                 expires_in: int | None = None, include_refresh_token: bool = True) -> dict[str, Any]:
        if grant_type == "client_credentials":
            granted = narrow(scope, client.doc.scopes, contexts=("system", "user"))
            granted = " ".join(w for w in granted.split() if "/" in w and not w.startswith("launch"))
            ttl = BACKEND_TTL
        else:
            granted = narrow(scope, client.doc.scopes, contexts=("patient",))
            ttl = ACCESS_TTL
        if not granted:
            raise InvalidScopeError("none of the requested scopes is registered for this client")
        token: dict[str, Any] = {"token_type": "Bearer", "access_token": generate_token(42),
                                 "expires_in": ttl, "scope": granted}
        if include_refresh_token and grant_type != "client_credentials" and \
                parse_scopes(granted).has("offline_access"):
            token["refresh_token"] = generate_token(48)
        return token

    def store_token(self, token: dict[str, Any], request: Any) -> None:
        client: SmartClient = request.client
        user = request.user or {}
        family = None
        grant_ends: int | None = None
        if request.payload.grant_type == "refresh_token":
            old = request.refresh_token.raw
            user = user or _user_of(old) or {}
            family = old.get("family") or old["_id"]
            # A grant ends REFRESH_TTL after the login that made it, however often it is refreshed: rotation
            # renews the token, not the resident's consent to the app.
            grant_ends = int(old["expires_at"])
        purpose = (request.payload.data.get("purpose_of_use") or "").strip() or None  # a code (views.token)
        issued = now()
        access_key = digest(token["access_token"])
        refresh_key = digest(token["refresh_token"]) if token.get("refresh_token") else None
        family = family or refresh_key  # a grant's first refresh token names its family
        common = dict(client_id=client.client_id, scope=token["scope"], account=user.get("account"),
                      patient=user.get("patient"), encounter=user.get("encounter"), fhir_user=user.get("fhir_user"),
                      province=client.doc.province, organization=client.doc.organization,
                      break_glass=client.doc.break_glass, purpose=purpose, issued_at=issued, family=family)
        docs: list[Any] = []
        pending = g.pop("ehc_pending_jti", None) if has_request_context() else None
        if pending is not None:
            docs.append(pending)
        docs.append(Token(token_hash=access_key, kind="access", expires_at=issued + token["expires_in"],
                          parent=refresh_key, **common))
        if refresh_key:
            docs.append(Token(token_hash=refresh_key, kind="refresh", expires_at=grant_ends or issued + REFRESH_TTL,
                              children=[access_key], **common))
        try:
            self.store.insert_all(docs)
        except BulkWriteError as err:
            first = (err.details.get("writeErrors") or [{}])[0]
            if pending is not None and first.get("index") == 0 and first.get("code") == 11000:
                raise InvalidClientError(description="the client assertion was used before (jti replay)") from None
            raise
        if user.get("account") and user.get("patient"):
            self._still_acting(user["account"], user["patient"], family, [access_key, refresh_key])
        if user.get("patient"):
            token["patient"] = user["patient"]
            token["need_patient_banner"] = True
        if user.get("encounter"):
            token["encounter"] = user["encounter"]
        scopes = parse_scopes(token["scope"])
        if scopes.has("openid") and user.get("account"):  # OpenID Connect Core 3.1.3.3: openid gets an id_token
            code = getattr(request, "authorization_code", None)
            token["id_token"] = self.id_token(client, user, getattr(code, "nonce", None), issued,
                                              scopes.has("fhirUser"))

    def _still_acting(self, account: str, patient: str, family: str | None, keys: list[str | None]) -> None:
        """Tokens for a relative only while the binding lasts. Asked after the tokens are stored: a code or a
        refresh token issued before the binding ended gives nothing, and an unbinding that revoked the account's
        tokens while this grant was being answered is seen here (it ends the binding before revoking)."""
        from app.auth.bindings import acts_for

        if acts_for(self.store, account, patient):
            return
        if family:
            self.store.revoke_family(family, "the account no longer acts for the patient")
        for key in (k for k in keys if k):
            self.store.collection(Token).update_one({"_id": key}, {"$set": {"revoked": True}})
            self.store.forget(key)
        raise InvalidGrantError(description=f"this account no longer acts for Patient/{patient}")

    def id_token(self, client: SmartClient, user: dict[str, Any], nonce: str | None, issued: int,
                 fhir_user: bool) -> str:
        """The OpenID Connect id_token; the fhirUser claim only when the fhirUser scope was granted (SMART)."""
        base = fhir_base(self.svc)
        claims: dict[str, Any] = {"iss": base, "sub": user["account"], "aud": client.client_id, "iat": issued,
                                  "exp": issued + ACCESS_TTL}
        if fhir_user and user.get("fhir_user"):
            claims["fhirUser"] = f"{base}/{user['fhir_user']}"
        if nonce:
            claims["nonce"] = nonce
        key = self.keys.signing_key
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Any:
        resp = super().handle_response(status_code, payload, headers)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Pragma"] = "no-cache"
        return resp
