"""Health probes: GET /healthz (liveness: the process answers) and GET /readyz (readiness: the database
answers a ping within about a second and the platform keys are readable). No token needed; they say nothing
about records."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, Response, current_app, jsonify

READY_TIMEOUT = 1.0


def healthz() -> Response:
    return jsonify(status="ok")


def check_database(svc: Any, timeout: float = READY_TIMEOUT) -> tuple[bool, str]:
    import pymongo
    from pymongo.errors import PyMongoError

    t0 = time.perf_counter()
    try:
        with pymongo.timeout(timeout):
            svc.handle.client.admin.command("ping")
    except PyMongoError as err:
        return False, f"not reachable within {timeout:g} s ({type(err).__name__})"
    return True, f"ok ({(time.perf_counter() - t0) * 1000:.0f} ms)"


def check_keys(svc: Any) -> tuple[bool, str]:
    keyring = svc.extensions.get("keyring")
    if keyring is None:
        return False, "platform keys not loaded"
    settings = svc.settings
    kdir = keyring.keys_dir
    files = [settings.index_key_file or kdir / "index.key", settings.card_root_key_file or kdir / "card-root.key",
             settings.field_key_file or kdir / "field.key"]
    unreadable = [str(f) for f in files if not os.access(f, os.R_OK)]
    if unreadable:
        return False, "not readable: " + ", ".join(unreadable)
    return True, "ok"


def readyz() -> Response:
    svc = current_app.extensions.get("ehc")
    if svc is None:
        return _answer({"services": (False, "not built")})
    return _answer({"database": check_database(svc), "keys": check_keys(svc)})


def _answer(checks: dict[str, tuple[bool, str]]) -> Response:
    ready = all(ok for ok, _ in checks.values())
    resp = jsonify(status="ready" if ready else "not ready",
                   checks={name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()})
    resp.status_code = 200 if ready else 503
    resp.headers["Cache-Control"] = "no-store"
    return resp


def init_app(app: Flask) -> None:
    app.add_url_rule("/healthz", "ehc_healthz", healthz, methods=["GET"])
    app.add_url_rule("/readyz", "ehc_readyz", readyz, methods=["GET"])
