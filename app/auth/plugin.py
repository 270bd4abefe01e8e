"""Wiring of the auth layer into the app (create_app calls init_app).

Sets svc.policy to the SMART policy when settings.auth_required; registers the OAuth and discovery
blueprints; keeps the CapabilityStatement's security section current; adds security headers to every
response (nosniff, X-Frame-Options DENY, Referrer-Policy, no-store on /oauth), and CORS headers for the
origins of registered SMART apps' redirect URIs only. Nothing here logs a secret or a token.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface

from app.auth import launch, smart, views
from app.auth.bindings import end_bindings_recorded_by
from app.auth.consent import freeze_grantees
from app.auth.keys import AuthKeys
from app.auth.models import AuthStore, Client
from app.auth.policy import PURPOSE_HEADER, SmartPolicy
from app.auth.ratelimit import Limit, RateLimiter
from app.auth.server import SmartAuthorizationServer
from app.store.events import StoreEvent


class _LoginCookie(SecureCookieSessionInterface):
    """The authorization server's login (Flask's signed session cookie), Secure on every https request, as the
    portal's own cookie is (smart.secure_cookies), not only when EHC_BASE_URL says https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return smart.secure_cookies()


CORS_PATHS = ("/fhir", "/oauth/token", "/oauth/revoke", "/oauth/introspect", "/.well-known/")
CORS_ALLOW_HEADERS = ("Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, "
                      f"If-Modified-Since, {PURPOSE_HEADER}")
CORS_EXPOSE_HEADERS = "Location, ETag, Last-Modified, Content-Location, Preference-Applied"
FRAME_EXEMPT: set[str] = set()  # endpoints that may be framed (none: the login pages refuse framing)


@dataclass
class AuthState:
    """What the auth layer keeps per Services instance (svc.extensions["auth"])."""

    svc: Any
    store: AuthStore
    keys: AuthKeys
    server: SmartAuthorizationServer
    token_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(Limit(rate=20.0, burst=100)))
    login_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(Limit(rate=0.2, burst=10)))
    _origins: tuple[float, frozenset[str]] = (0.0, frozenset())
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sms_sender(self) -> Any:
        return self.svc.extensions.get("sms_sender")

    def allowed_origins(self) -> frozenset[str]:
        """Origins of registered redirect URIs (re-read every 30 s)."""
        expires, origins = self._origins
        if expires > time.monotonic():
            return origins
        found = set()
        for doc in self.store.collection(Client).find({}, {"redirect_uris": 1, "active": 1}):
            if doc.get("active", True):
                for uri in doc.get("redirect_uris") or []:
                    parts = urlsplit(uri)
                    if parts.scheme and parts.netloc:
                        found.add(f"{parts.scheme}://{parts.netloc}")
        with self._lock:
            self._origins = (time.monotonic() + 30.0, frozenset(found))
        return self._origins[1]


def database_uri(svc: Any) -> tuple[str, str]:
    settings = svc.settings
    uri = settings.mongodb_uri or f"mongodb://127.0.0.1:{settings.embedded_port}/"
    return uri, settings.db_name


def auth_state(svc: Any) -> AuthState:
    """The auth state of a Services instance, created on first use (the CLI uses it without Flask)."""
    st: AuthState | None = svc.extensions.get("auth")
    if st is None:
        uri, name = database_uri(svc)
        store = AuthStore(uri, name, alias=f"ehc-auth-{uuid.uuid4().hex[:12]}")
        keys = AuthKeys(svc.settings.data_dir)
        st = svc.extensions["auth"] = AuthState(svc, store, keys, SmartAuthorizationServer(svc, store, keys))
    return st


def init_app(app: Flask, svc: Any) -> None:
    st = auth_state(svc)
    if svc.settings.auth_required:
        svc.policy = SmartPolicy(svc, st.store)

    def freeze(event: StoreEvent) -> None:
        """A Consent's grantees are fixed when it is written (app.auth.consent.freeze_grantees)."""
        if event.resource is not None:
            def load_org(org_id: str) -> dict[str, Any] | None:
                doc = svc.repo.get_doc("Organization", org_id)
                return doc.get("res") if doc and not doc.get("del") else None

            freeze_grantees(event.resource, load_org)

    for name in ("pre-create", "pre-update"):
        svc.events.subscribe(name, freeze, "Consent")

    def end_recorded_bindings(event: StoreEvent) -> None:
        """A Consent that records a binding (一人绑定多人) and has ended takes the binding with it."""
        consent = event.resource
        cid = event.extra.get("id") or (consent or event.previous or {}).get("id")
        if cid and (consent is None or consent.get("status") != "active"):
            end_bindings_recorded_by(svc, st.store, str(cid))

    for name in ("updated", "deleted"):
        svc.events.subscribe(name, end_recorded_bindings, "Consent")
    app.register_blueprint(smart.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(launch.bp)
    if not app.secret_key:
        app.secret_key = st.keys.secret
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_NAME"] = "ehc_session"
    app.session_interface = _LoginCookie()

    @app.before_request
    def _capability() -> None:
        if svc.settings.auth_required and request.path.rstrip("/") == "/fhir/metadata":
            smart.refresh_capability(svc)

    @app.after_request
    def _headers(resp: Response) -> Response:
        h = resp.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        if request.endpoint not in FRAME_EXEMPT:
            h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        path = request.path
        if path.startswith("/oauth/"):
            h["Cache-Control"] = "no-store"
            h["Pragma"] = "no-cache"
            if resp.mimetype == "text/html":
                h["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                                "frame-ancestors 'none'")
        origin = request.headers.get("Origin")
        if origin and path.startswith(CORS_PATHS) and origin in st.allowed_origins():
            h["Access-Control-Allow-Origin"] = origin
            h.add("Vary", "Origin")
            h["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
            h["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            h["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
            h["Access-Control-Max-Age"] = "600"
        return resp
