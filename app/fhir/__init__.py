"""The web edge: Flask glue around the framework-free router. Every error becomes an OperationOutcome here."""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import parse_qsl

from flask import Blueprint, Flask, Response, current_app, g, request

from app.core import fhirjson
from app.core.access import AccessRecord
from app.core.errors import FhirError
from app.fhir import outage
from app.fhir.http import (
    XML_TYPES,
    FhirResponse,
    body_bytes,
    check_charset,
    check_fhir_version,
    check_json_depth,
    native_binary_type,
    negotiate,
    query_params,
    read_json_body,
    to_flask,
    too_deep,
)
from app.fhir.router import FhirRequest, is_public, target_of
from app.fhir.routes import build_router
from app.services import Services
from app.store.database import UNAVAILABLE_ERRORS
from app.store.protect import redact_query
from app.store.repository import WriteContext

log = logging.getLogger("ehc.fhir")
bp = Blueprint("fhir", __name__)
ROUTER = build_router()
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def services() -> Services:
    svc: Services = current_app.extensions["ehc"]
    return svc


def fhir_base() -> str:
    svc = services()
    if svc.settings.base_url:
        return svc.settings.base_url
    return request.host_url.rstrip("/") + "/fhir"


def _body_for(method: str, path: str, svc: Services) -> tuple[dict[str, Any] | None, bytes | None]:
    if method in ("GET", "DELETE"):
        return None, None
    native = native_binary_type(request, path)
    if native is not None:  # POST/PUT Binary with the content itself: stored as a Binary resource
        data = body_bytes(request)
        if len(data) > svc.settings.max_body_bytes:
            raise FhirError(413, f"the request body is larger than {svc.settings.max_body_bytes} bytes")
        binary: dict[str, Any] = {"resourceType": "Binary", "contentType": native,
                                  "data": base64.b64encode(data).decode("ascii")}
        context = request.headers.get("X-Security-Context")
        if context:
            binary["securityContext"] = {"reference": context}
        segs = path.strip("/").split("/")
        if len(segs) == 2:
            binary["id"] = segs[1]
        return binary, None
    ctype = (request.mimetype or "").lower()
    if method == "PATCH":
        # FHIRPath Patch: a Parameters resource, in JSON or in XML as every other resource body
        if ctype in ("application/fhir+json", "application/json+fhir") or ctype in XML_TYPES:
            if body_bytes(request).lstrip().startswith(b"["):
                raise FhirError(415, "a JSON Patch needs Content-Type application/json-patch+json; "
                                     "application/fhir+json carries a FHIRPath Patch (a Parameters resource)")
            return {"_fhirpath_patch": read_json_body(request, svc.settings.max_body_bytes)}, None
        if ctype not in ("application/json-patch+json", "application/json"):
            raise FhirError(415, "PATCH needs Content-Type application/json-patch+json (JSON Patch) or "
                                 "application/fhir+json or +xml (FHIRPath Patch, a Parameters resource)")
        check_charset(request)
        data = body_bytes(request)
        if len(data) > svc.settings.max_body_bytes:
            raise FhirError(413, f"the request body is larger than {svc.settings.max_body_bytes} bytes")
        try:
            patch = fhirjson.loads(data)  # decimals keep their text
        except fhirjson.DuplicateKeyError as err:
            raise FhirError(400, f"the JSON Patch is refused: {err}") from None
        except fhirjson.JsonError as err:
            raise FhirError(400, f"the JSON Patch is not valid JSON: {err}") from None
        except RecursionError:
            raise too_deep() from None
        check_json_depth(patch)
        return {"_patch": patch}, data
    if method == "POST" and path.endswith("_search"):
        if ctype == "application/x-www-form-urlencoded":
            return {"_form": parse_qsl(body_bytes(request).decode("utf-8", "replace"), keep_blank_values=True)}, None
        return {"_form": []} if not body_bytes(request) else None, None
    return read_json_body(request, svc.settings.max_body_bytes), None


def _principal_province(svc: Services, principal: Any) -> str:
    return getattr(principal, "province", None) or svc.settings.province


@bp.route("/fhir", methods=METHODS, defaults={"path": ""}, strict_slashes=False)
@bp.route("/fhir/<path:path>", methods=METHODS)
def fhir_entry(path: str) -> Response:
    svc = services()
    media = "application/fhir+json"
    pretty = request.args.get("_pretty") == "true"
    principal = None
    try:
        # HEAD is GET without the body in the answer (RFC 9110 §9.3.2): werkzeug drops the body it is given.
        method = "GET" if request.method == "HEAD" else request.method
        # A Binary read in its own content type: the handler answers with its bytes; errors stay FHIR JSON.
        native = native_binary_type(request, path)
        media = negotiate(request) if native is None or method != "GET" else "application/fhir+json"
        check_fhir_version(request)
        if not is_public(method, path):  # conformance resources are public (router.PUBLIC, the one list)
            # Authenticated once per request; a before_request hook (audit) may have done it already.
            principal = g.get("ehc_principal") or svc.policy.authenticate(request.headers.get("Authorization"))
            g.ehc_principal = principal
        body, raw = _body_for(method, path, svc)
        req = FhirRequest(
            method=method,
            path=path.strip("/"),
            params=query_params(request),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            raw_body=raw,
            content_type=request.mimetype,
            base=fhir_base(),
            principal=principal,
            write=WriteContext(province=_principal_province(svc, principal),
                               client_id=getattr(principal, "client_id", None),
                               organization=getattr(principal, "organization", None),
                               user=getattr(principal, "user", None), principal=principal),
            remote_addr=request.remote_addr,
        )
        resp = ROUTER.dispatch(req, svc)
    except FhirError as err:
        if err.status in (401, 403) and not err.audited:
            query = redact_query(svc.repo.protector, request.query_string.decode() or None)
            rtype, ids = target_of(path)  # the record tried, so that its patient sees the attempt
            svc.record_access(AccessRecord("refused", rtype, ids, "4", err.status, principal,
                                           query, err.diagnostics, remote_addr=request.remote_addr))
        resp = FhirResponse(err.status, err.outcome(), dict(err.headers))
    except UNAVAILABLE_ERRORS as err:  # the database is down: 503 + Retry-After within about a second
        resp = outage.unavailable(svc, err)
    except Exception:  # the one place that turns any failure into an OperationOutcome, never a trace
        log.exception("unhandled error on %s /fhir/%s", request.method, path)
        outage.abandon_claims(svc)
        resp = FhirResponse(500, FhirError(500, "internal error; the server log has the details").outcome())
    return to_flask(resp, media, pretty)


def init_app(app: Flask, svc: Services) -> None:
    app.extensions["ehc"] = svc
    app.register_blueprint(bp)
    outage.init_app(app, svc)

    @app.errorhandler(413)
    def _too_large(_e: Any) -> Response:
        return to_flask(FhirResponse(413, FhirError(413, "the request body is too large").outcome()),
                        "application/fhir+json", False)

    @app.errorhandler(404)
    def _not_found(_e: Any) -> Response:
        return to_flask(FhirResponse(404, FhirError(404, f"nothing at {request.path}").outcome()),
                        "application/fhir+json", False)

    @app.errorhandler(405)
    def _not_allowed(e: Any) -> Response:  # a method no route of the app takes (TRACE, ...): Allow says which do
        allowed = ", ".join(getattr(e, "valid_methods", None) or ())
        return to_flask(FhirResponse(405, FhirError(405, f"{request.method} not allowed").outcome(),
                                     headers={"Allow": allowed}), "application/fhir+json", False)
