"""GET /ehc/audit/checkpoints: the signed checkpoints of the audit chain head (app.audit.checkpoints).

    GET /ehc/audit/checkpoints[?after=<seq>][&_count=<n>]
    200 {"chain": "<province>/<database>", "keys": "/ehc/keys",
         "checkpoints": [{chain, seq, head, time, kid, alg, sig}, ...]}     oldest first, the newest n (100)

No token is needed, as for /ehc/keys: a checkpoint carries a sequence number, a hash and a time, nothing about
anyone. Auditors (or the national node) fetch them regularly and keep them, so that the node cannot later
cut the chain short or rewrite it without a copy elsewhere disagreeing; docs/audit.md says how to check one
offline with the keys of /ehc/keys.
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request

from app.core.errors import FhirError

bp = Blueprint("ehc_audit", __name__, url_prefix="/ehc/audit")
MAX_COUNT = 1000


def _bad(field: str, text: str) -> Response:
    outcome = FhirError(400, text, code="invalid", expression=field).outcome()
    return Response(json.dumps(outcome), 400, mimetype="application/fhir+json")


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 15:
        raise ValueError(name)
    return int(raw)


@bp.get("/checkpoints")
def checkpoints() -> Response:
    svc = current_app.extensions["ehc"]
    trail = svc.extensions.get("audit")
    try:
        after = _int_arg("after")
        count = _int_arg("_count")
    except ValueError as err:
        return _bad(str(err), f"{err} must be a non-negative integer")
    count = min(count if count is not None else 100, MAX_COUNT)
    cps = trail.sealer.checkpoints if trail is not None else None
    body = {"chain": cps.chain if cps else None, "keys": "/ehc/keys",
            "checkpoints": cps.recent(after=after, limit=count) if cps and count else []}
    resp = Response(json.dumps(body, ensure_ascii=False), 200, mimetype="application/json")
    resp.headers["Cache-Control"] = "no-cache"
    return resp
