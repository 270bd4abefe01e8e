"""The resident portal (居民端) under /portal: a SMART app of this server, built in.

It holds no key to the database's records: it signs the resident in through /oauth/authorize (authorization
code + PKCE, its own public client registration), keeps the patient-scoped tokens in a server-side session, and
reads and writes only through the FHIR API with those tokens (app.portal.fhirclient), so the access gate and
the audit trail treat it like any other app. Pages: my card, family, my records, consents, who read my records.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

log = logging.getLogger("ehc.portal")


def init_app(app: Flask, svc: Any) -> None:
    from app.auth.plugin import auth_state
    from app.portal import accesses, card, consents, family, records  # noqa: F401 - they add their routes
    from app.portal.registration import ensure_client
    from app.portal.web import bp

    app.register_blueprint(bp)
    base = (svc.settings.base_url or "").rstrip("/")
    redirect_uri = (base[: -len("/fhir")] if base.endswith("/fhir") else base) + "/portal/callback" if base else None
    try:
        ensure_client(auth_state(svc).store, svc.settings.province, redirect_uri)
    except Exception as err:  # noqa: BLE001 - the database may be down at start-up; the login page retries
        log.warning("portal: could not register its client at start-up (%s); will retry at first login", err)
