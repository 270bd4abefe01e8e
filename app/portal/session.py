"""The portal's session: a random id in an HttpOnly, SameSite=Lax cookie (Secure behind TLS, path /portal),
and the state on the server, in the collection `portal_sessions` under the SHA-256 of the id, encrypted
(SM4-GCM) with a key derived from the id — so a database dump holds no usable access or refresh token.

Expiry: 30 minutes idle, 8 hours at most — both far shorter than the refresh token's 30 days, so a session
never outlives the tokens it holds. Logout deletes the state and revokes the tokens. The session is kept
apart from Flask's `session` cookie, which the OAuth login pages clear when a resident signs in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from flask import Response, current_app, g, request

from app.auth.smart import secure_cookies
from app.crypto import CryptoError, sm3_hmac, sm4_gcm_decrypt, sm4_gcm_encrypt

COOKIE = "ehc_portal"
COLLECTION = "portal_sessions"
IDLE_SECONDS = 30 * 60
MAX_SECONDS = 8 * 3600
_last_sweep = [0.0]


def _collection() -> Any:
    return current_app.extensions["ehc"].handle.db[COLLECTION]


def _key(sid: str) -> bytes:
    return sm3_hmac(sid.encode(), b"ehc-portal-session")[:16]


def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class PortalSession:
    def __init__(self, sid: str, data: dict[str, Any], created: int, fresh: bool) -> None:
        self.sid = sid
        self.data = data
        self.created = created
        self.fresh = fresh
        self.dirty = fresh
        self.ended = False

    # -- values -------------------------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.dirty = True

    def pop(self, key: str, default: Any = None) -> Any:
        self.dirty = True
        return self.data.pop(key, default)

    @property
    def csrf(self) -> str:
        token = self.data.get("csrf")
        if not token:
            token = secrets.token_urlsafe(24)
            self.set("csrf", token)
        return str(token)

    def check_csrf(self, value: str | None) -> bool:
        return bool(value) and secrets.compare_digest(str(value), self.csrf)

    @property
    def logged_in(self) -> bool:
        return bool(self.data.get("account")) and bool(self.data.get("tokens"))

    def rotate(self) -> None:
        """A new id after login (no session fixation); the old state is deleted."""
        _collection().delete_one({"_id": _hash(self.sid)})
        self.sid = secrets.token_urlsafe(32)
        self.created = int(time.time())
        self.fresh = True
        self.dirty = True
        self.data["csrf"] = secrets.token_urlsafe(24)

    def end(self) -> None:
        _collection().delete_one({"_id": _hash(self.sid)})
        self.ended = True

    # -- storage ---------------------------------------------------------------------------------------------

    def store(self) -> None:
        """Write the state. Only a new session is inserted: the state of one that existed is replaced only while
        it still exists, so a request still under way when the browser signed out (or when the session expired
        and was swept) cannot bring it back with its tokens."""
        now = int(time.time())
        blob = sm4_gcm_encrypt(_key(self.sid), json.dumps(self.data).encode(), self.sid[:8].encode())
        _collection().replace_one({"_id": _hash(self.sid)}, {
            "_id": _hash(self.sid), "created": self.created, "seen": now,
            "expires_at": min(now + IDLE_SECONDS, self.created + MAX_SECONDS),
            "data": base64.b64encode(blob).decode()}, upsert=self.fresh)


def _load(sid: str | None) -> PortalSession:
    now = int(time.time())
    if sid and len(sid) < 100:
        doc = _collection().find_one({"_id": _hash(sid)})
        if doc and doc.get("expires_at", 0) > now and now - int(doc.get("created", 0)) < MAX_SECONDS:
            try:
                data = json.loads(sm4_gcm_decrypt(_key(sid), base64.b64decode(doc["data"]), sid[:8].encode()))
                sess = PortalSession(sid, data, int(doc["created"]), False)
                sess.dirty = now - int(doc.get("seen", 0)) > 60  # idle clock: written at most once a minute
                return sess
            except (CryptoError, ValueError, KeyError):
                pass
        if doc:
            _collection().delete_one({"_id": doc["_id"]})
    if now - _last_sweep[0] > 600:
        _last_sweep[0] = now
        _collection().delete_many({"expires_at": {"$lt": now}})
    return PortalSession(secrets.token_urlsafe(32), {}, now, True)


def current() -> PortalSession:
    sess: PortalSession | None = getattr(g, "portal_session", None)
    if sess is None:
        sess = g.portal_session = _load(request.cookies.get(COOKIE))
    return sess


def finish(resp: Response) -> Response:
    sess: PortalSession | None = getattr(g, "portal_session", None)
    if sess is None:
        return resp
    if sess.ended:
        resp.delete_cookie(COOKIE, path="/portal", secure=secure_cookies(), httponly=True, samesite="Lax")
        return resp
    if sess.dirty:
        sess.store()
    if sess.fresh or sess.dirty:
        resp.set_cookie(COOKIE, sess.sid, path="/portal", httponly=True, samesite="Lax", secure=secure_cookies(),
                        max_age=MAX_SECONDS)
    return resp
