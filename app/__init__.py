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
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    svc = services or build_services(settings)

    from app import fhir

    fhir.init_app(app, svc)
    for name in ("app.mpi.plugin", "app.ehc.plugin", "app.audit.plugin", "app.auth.plugin"):
        _init_optional(name, app, svc)
    return app


def _init_optional(module: str, app: Flask, svc: Services) -> None:  # noqa: F821
    """Subsystems attach through init_app(app, services); each is optional while being built."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        return
    mod.init_app(app, svc)
