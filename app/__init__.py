"""ehc-fhir: FHIR R4 server for the resident electronic health card. create_app builds it; nothing runs at import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing app.crypto or app.search must not load Flask or pymongo
    from flask import Flask

    from app.config import Settings
    from app.services import Services


def create_app(settings: Settings | None = None, services: Services | None = None, **overrides: Any) -> Flask:
    from flask import Flask

    from app.config import load_settings
    from app.services import build_services

    settings = (settings or load_settings()).with_overrides(**overrides)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if settings.trusted_proxies > 0:  # the client's address and scheme as the proxies in front saw them
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    from app.ops import health, logging, metrics

    # First: their request hooks time and log every request, and the database listener must be in place
    # before the first client connects.
    for ops in (logging, metrics, health):
        ops.init_app(app)
    svc = services or build_services(settings)

    from app import fhir, portal
    from app.audit import plugin as audit
    from app.auth import plugin as auth
    from app.ehc import plugin as ehc
    from app.federation import plugin as federation
    from app.mpi import plugin as mpi

    fhir.init_app(app, svc)
    # Order matters: the master index validates and links before the card is issued; the audit trail and the
    # access policy attach last.
    for subsystem in (mpi, ehc, audit, auth, federation):
        subsystem.init_app(app, svc)
    portal.init_app(app, svc)
    return app
