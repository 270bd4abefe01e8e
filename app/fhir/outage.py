"""When the database cannot be reached: 503 with Retry-After and an OperationOutcome, for every endpoint.

The store fails fast (app.store.database: about a second to find no server) and raises pymongo's connection
errors, or DatabaseUnavailable from a transaction. `fhir_entry` answers those of the FHIR API itself; the
handlers here answer the rest (the OAuth endpoints, the portal, before- and after-request hooks) as JSON
instead of Flask's HTML 500 page. Either way the log gets one line, not a traceback, and history slots the
failed write had claimed are released (app.store.owners), at once or as soon as the database is back.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import InternalServerError

from app.core.errors import FhirError
from app.fhir.http import FhirResponse, to_flask
from app.services import Services
from app.store.database import UNAVAILABLE_ERRORS, DatabaseUnavailable
from app.store.owners import owner_for

log = logging.getLogger("ehc.fhir")


def is_unavailable(err: BaseException | None) -> bool:
    return isinstance(err, UNAVAILABLE_ERRORS)


def unavailable(svc: Services, err: BaseException) -> FhirResponse:
    """The answer to a request that failed because the database is unreachable."""
    log.warning("database unavailable on %s %s: %s", request.method, request.path, type(err).__name__)
    abandon_claims(svc)
    outage = DatabaseUnavailable()
    return FhirResponse(outage.status, outage.outcome(), dict(outage.headers))


def abandon_claims(svc: Services) -> None:
    """A write of this request failed: release the history slots it claimed but never used."""
    try:
        owner_for(svc.handle.db).abandon_claims()
    except Exception:  # never let clean-up hide the original failure
        log.warning("could not release history slots after a failed write", exc_info=True)


def init_app(app: Flask, svc: Services) -> None:
    def _db_down(err: Exception) -> Response:
        return to_flask(unavailable(svc, err), "application/fhir+json", False)

    for cls in UNAVAILABLE_ERRORS:
        app.register_error_handler(cls, _db_down)

    @app.errorhandler(InternalServerError)
    def _internal(err: InternalServerError) -> Response:
        original: Any = getattr(err, "original_exception", None)
        if is_unavailable(original):
            return _db_down(original)
        abandon_claims(svc)
        outcome = FhirError(500, "internal error; the server log has the details").outcome()
        return to_flask(FhirResponse(500, outcome), "application/fhir+json", False)
