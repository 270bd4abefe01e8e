"""The portal's own SMART client registration: a public client (authorization code + PKCE, no secret), patient
scopes only, created when the portal starts if it is missing, with a redirect URI per origin the portal is
served from (https, or http on the loopback addresses, as app.auth.registration allows)."""

from __future__ import annotations

import re
import threading

from app.auth.models import AuthStore, Client
from app.auth.scopes import parse_scopes

CLIENT_ID = "ehc-resident-portal"
CLIENT_NAME = "电子健康卡居民门户 Resident portal"
# What the portal asks for: the resident's own (or a bound relative's) records, read-only, plus writing the
# resident's Consents; a refresh token (offline_access) to renew the one-hour access token during a session.
SCOPES = "launch/patient openid fhirUser offline_access patient/*.rs patient/Consent.cru"
_ALLOWED = re.compile(r"^(https://|http://(127\.0\.0\.1|localhost)(:\d+)?/)")
_LOOPBACK = re.compile(r"^https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/")
MAX_LOOPBACK_URIS = 16  # a developer's ports; the oldest give way, so no Host header can grow the list
_lock = threading.Lock()


def redirect_allowed(uri: str) -> bool:
    return bool(_ALLOWED.match(uri))


def ensure_client(store: AuthStore, province: str, redirect_uri: str | None = None, *,
                  from_request: bool = False) -> Client:
    """The portal's Client, created when missing; `redirect_uri` is added when new and allowed. One built from a
    request (`from_request`: no EHC_BASE_URL says where the portal is) is added only on a loopback address: its
    host comes from the Host header, which whoever sends the request chooses, and the codes of every resident
    who signs in through a link to the real server would go there."""
    parse_scopes(SCOPES, strict=True)  # a typo here must fail loudly, not register a broken client
    with _lock:
        client = store.get(Client, CLIENT_ID)
        changed = False
        if client is None:
            client = Client(client_id=CLIENT_ID, name=CLIENT_NAME, public=True, scopes=SCOPES, redirect_uris=[],
                            province=province)
            changed = True
        if client.scopes != SCOPES:
            client.scopes = SCOPES
            changed = True
        if redirect_uri and redirect_allowed(redirect_uri) and redirect_uri not in client.redirect_uris and (
                not from_request or _LOOPBACK.match(redirect_uri)):
            uris = [*client.redirect_uris, redirect_uri]
            loopback = [u for u in uris if _LOOPBACK.match(u)]
            client.redirect_uris = [u for u in uris if u not in loopback[:-MAX_LOOPBACK_URIS]]
            changed = True
        if changed:
            store.save(client)
        return client
