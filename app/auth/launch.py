"""EHR launch contexts (SMART App Launch 2.0, "Launch App: EHR Launch"): `POST /oauth/launch`.

An EHR holding an access token from `client_credentials` (Backend Services or client_secret_basic) with a
system/ or user/ scope that lets it read the Patient posts `patient=<id>` (and optionally `encounter=<id>`,
`client_id=<the app>`) and gets `{"launch": "<opaque id>", "expires_in": 300}`. The EHR hands the id to
the app, which sends it to /oauth/authorize with the `launch` scope; the authorization server
(app.auth.server) takes the launch there — once — and its patient becomes the token's patient context.
Like codes, launch ids are stored as the SHA-256 of their value.
"""

from __future__ import annotations

import re

from authlib.common.security import generate_token
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app.auth.models import AuthStore, Launch, digest, now
from app.auth.policy import SmartPolicy
from app.core.errors import FhirError

LAUNCH_TTL = 300
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")  # a FHIR id

bp = Blueprint("ehc_launch", __name__)


def peek_launch(store: AuthStore, launch_id: str) -> Launch | None:
    """The launch behind an id if it is known and not expired (it stays usable)."""
    doc = store.get(Launch, digest(launch_id))
    return doc if doc is not None and doc.expires_at > now() else None


def take_launch(store: AuthStore, launch_id: str) -> Launch | None:
    """Remove and return the launch (single use: two concurrent takers never both get it)."""
    doc = store.take(Launch, digest(launch_id))
    return doc if doc is not None and doc.expires_at > now() else None


def create_launch(store: AuthStore, patient: str, created_by: str, encounter: str | None = None,
                  client_id: str | None = None) -> str:
    """Store a launch context; returns its opaque id (shown once)."""
    launch_id = generate_token(32)
    store.save(Launch(launch_hash=digest(launch_id), patient=patient, encounter=encounter, client_id=client_id,
                      created_by=created_by, expires_at=now() + LAUNCH_TTL), insert=True)
    return launch_id


def _error(status: int, error: str, description: str) -> ResponseReturnValue:
    resp = jsonify(error=error, error_description=description)
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = f'Bearer realm="ehc-fhir", error="{error}"'
    return resp


@bp.route("/oauth/launch", methods=["POST"])
def launch() -> ResponseReturnValue:
    svc = current_app.extensions["ehc"]
    st = svc.extensions["auth"]
    policy = svc.policy if isinstance(svc.policy, SmartPolicy) else SmartPolicy(svc, st.store)
    try:
        principal = policy.authenticate(request.headers.get("Authorization"))
    except FhirError as err:
        return _error(401, "invalid_token", str(err))
    assert principal is not None
    if principal.patient or not any(s.split("/", 1)[0] in ("system", "user") for s in principal.scopes):
        return _error(403, "insufficient_scope", "creating a launch needs a system/ or user/ token of an EHR")
    form = request.form
    patient, encounter = form.get("patient") or "", form.get("encounter") or None
    if not _ID.match(patient) or (encounter is not None and not _ID.match(encounter)):
        return _error(400, "invalid_request", "patient (and encounter, if given) must be FHIR ids")
    app_id = form.get("client_id") or None
    if app_id is not None and st.server.lookup_client(app_id) is None:
        return _error(400, "invalid_request", f"no active client {app_id!r}")
    if encounter is not None and "Encounter" not in svc.repo.resource_types:
        return _error(400, "invalid_request", "this server holds no Encounter: launch with a patient only")
    # the EHR may launch only for records it may read itself (scope, province, consent)
    docs: dict[str, dict] = {}
    for rtype, rid in (("Patient", patient), ("Encounter", encounter)):
        if rid is None:
            continue
        doc = svc.repo.get_doc(rtype, rid)
        if doc is None or doc.get("del"):
            return _error(400, "invalid_request", f"{rtype}/{rid} is not known")
        decision = policy.disclose(principal, rtype, doc["res"], doc.get("prov"), "r")
        if not decision.allowed:
            return _error(403, "insufficient_scope", decision.reason)
        docs[rtype] = doc
    subject = ((docs.get("Encounter") or {}).get("res") or {}).get("subject") or {}
    if encounter is not None and subject.get("reference") != f"Patient/{patient}":
        return _error(400, "invalid_request", "the encounter is not the patient's")
    launch_id = create_launch(st.store, patient, str(principal.client_id), encounter, app_id)
    return jsonify(launch=launch_id, expires_in=LAUNCH_TTL)
