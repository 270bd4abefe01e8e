"""Attaches the audit trail to the web app: an access listener (every AccessRecord becomes an AuditEvent),
request hooks, storage-event subscriptions, a background sealing thread and the checkpoint endpoint.

Request hooks (Flask, the web edge only):
- every /fhir request tells the group committer it is in flight (so a batch can wait for it briefly), and
  leaves when it submits its last record or ends;
- before a request that changes data, the intent of its event is stored (writer.reserve), so that the
  event survives a process that dies between the operation and its event; if it cannot be stored, the
  request is refused (503) before it changes anything;
- storage events of the request (read, created, updated, deleted) tell which patients it touched;
- after the request, one that produced no access record (a 404, a 400, $validate ...) is recorded here,
  so that every FHIR request leaves an event; if that record cannot be stored, the answer becomes a 503;
- AuditEvent reads seal first, so that a search sees the events written just before it (records spooled by
  other processes of this node are waited for: app.audit.spool.settle).
A record that cannot be stored raises AuditWriteError in the request: nothing is answered without its audit
event (the web edge turns it into a 500, the handler registered here into a 503 elsewhere).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from pymongo.errors import InvalidOperation

from app.audit import build_trail
from app.audit.commit import AuditWriteError
from app.audit.events import interaction_for, outcome_for, patient_refs, split_path
from app.audit.sealer import Sealer, SealResult
from app.audit.writer import AuditWriter
from app.core.access import AccessRecord, Principal
from app.core.errors import FhirError
from app.fhir.router import is_public
from app.services import Services
from app.store.events import StoreEvent

log = logging.getLogger("ehc.audit")
SEAL_INTERVAL = 1.0  # seconds between background passes when there is no backlog
# POSTs that store nothing: no intent record before them
READ_ONLY_POSTS = ("_search", "$validate", "$match", "$ehc-qrcode", "$everything", "$ihe-pix")


@dataclass
class _RequestAudit:
    intent_id: str | None = None  # the intent left before a write
    principal: Principal | None = None
    patients: set[str] = field(default_factory=set)
    recorded: int = 0
    token: int | None = None  # the committer's token while the request may still submit its last record
    public: bool = False  # a request of app.fhir.router.PUBLIC: the server's conformance resources, not audited


class SealLoop:
    """A daemon thread per process (started lazily by the first event, so that a pre-forking server runs one
    in each worker; one of them holds the lease at a time). While a pass reports more work (a backlog), the
    next pass starts at once; otherwise it waits `interval`. Passes are not triggered by each event: FerretDB
    on SQLite runs one write at a time, and a pass per request would slow every request. Each pass is bounded
    (Sealer.batch, Sealer.budget), so a backlog is worked off in steps of constant cost."""

    def __init__(self, sealer: Sealer, interval: float | None = None) -> None:
        self.sealer = sealer
        self.interval = SEAL_INTERVAL if interval is None else interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self.on_pass: Callable[[SealResult], None] | None = None  # for benchmarks and metrics

    def ensure_running(self) -> None:
        if self.interval <= 0:
            return
        if self._thread is None or self._pid != os.getpid():
            with self._lock:
                if self._thread is None or self._pid != os.getpid():
                    self._pid = os.getpid()
                    self._thread = threading.Thread(target=self._run, name="ehc-audit-sealer", daemon=True)
                    self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run_until_stopped(self) -> None:
        """The loop in the calling thread (a sealer process: `ehc audit seal --follow`)."""
        self._run()

    def _run(self) -> None:
        more = False
        while not self._stop.is_set():
            if not more:
                self._wake.wait(self.interval)
                self._wake.clear()
            if self._stop.is_set():
                return
            more = False
            try:
                result = self.sealer.seal(wait_seconds=0)
            except InvalidOperation:  # the database client was closed: the app is gone
                return
            except Exception:  # never let the thread die on a passing database error
                log.exception("audit: sealing failed; retrying in %s s", self.interval)
                continue
            if result is not None:
                more = result.more
                if self.on_pass is not None:
                    self.on_pass(result)


class AuditTrail:
    """What init_app leaves in svc.extensions["audit"]."""

    def __init__(self, svc: Services, writer: AuditWriter, sealer: Sealer) -> None:
        self.svc = svc
        self.writer = writer
        self.sealer = sealer
        # interval 0: no background thread here (`ehc serve` runs a sealer process: app.ops.sealer)
        self.loop = SealLoop(sealer, None if svc.settings.background_sealing else 0)

    # -- the access listener -------------------------------------------------------------------------

    def on_access(self, record: AccessRecord) -> None:
        """Store the event of an access; returns when it is durable. Raises AuditWriteError otherwise."""
        state = _state()
        self.loop.ensure_running()
        if state is None:
            self.writer.write(record)
            return
        intent_id, state.intent_id = state.intent_id, None
        state.recorded += 1
        leaving, state.token = state.token, None
        # the patients the request's storage events named since its last record: a batch records each entry
        patients, state.patients = state.patients, set()
        self.writer.write(record, intent_id=intent_id, method=request.method, path=_fhir_path(),
                          patients=patients, leaving=leaving)

    def on_store(self, event: StoreEvent) -> None:
        state = _state()
        if state is None:
            return
        resource = event.resource if event.resource is not None else event.previous
        state.patients |= patient_refs(event.resource_type, resource, event.extra.get("id"))

    # -- request hooks -------------------------------------------------------------------------------

    def before(self) -> Response | None:
        path = _fhir_path()
        if path is None:
            return None
        state = g.ehc_audit = _RequestAudit(public=is_public(request.method, path))
        if not state.public:
            state.token = self.writer.committer.enter()
        if path.startswith("AuditEvent"):
            try:
                self.writer.settle()
                self.sealer.seal(wait_seconds=2.0)
            except Exception:
                log.exception("audit: sealing before an AuditEvent read failed")
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and not path.endswith(READ_ONLY_POSTS):
            try:
                state.principal = self.svc.policy.authenticate(request.headers.get("Authorization"))
                g.ehc_principal = state.principal  # the web edge reuses it
            except Exception:
                return None  # refused before it can change anything: the refusal is recorded then
            try:
                state.intent_id = self.writer.reserve(request.method, path, request.query_string.decode() or None,
                                                      request.remote_addr, state.principal)
            except AuditWriteError as err:
                log.error("audit: the intent of %s /fhir/%s could not be stored: %s", request.method, path, err)
                return _unavailable()
        return None

    def after(self, response: Response) -> Response:
        state = _state()
        path = _fhir_path()
        if state is None or path is None or state.recorded or state.public:
            return response
        principal = state.principal or g.get("ehc_principal")
        if principal is None:
            try:
                principal = self.svc.policy.authenticate(request.headers.get("Authorization"))
            except Exception:
                principal = None
        rtype, ids = split_path(path)
        record = AccessRecord(interaction_for(request.method, path), rtype, ids, outcome_for(response.status_code),
                              response.status_code, principal, request.query_string.decode() or None,
                              _diagnostics(response), remote_addr=request.remote_addr)
        try:
            self.on_access(record)
        except Exception:
            log.exception("audit: could not record %s /fhir/%s", request.method, path)
            return _unavailable()  # not answered without its audit event
        return response

    def teardown(self, _exc: BaseException | None = None) -> None:
        state = _state()
        if state is not None and state.token is not None:
            token, state.token = state.token, None
            self.writer.committer.leave(token)


def _unavailable() -> Response:
    outcome = FhirError(503, "the audit trail cannot record this request now; retry",
                        code="transient").outcome()
    return Response(json.dumps(outcome), 503, {"Retry-After": "2"}, mimetype="application/fhir+json")


def _state() -> _RequestAudit | None:
    if not has_request_context():
        return None
    state: _RequestAudit | None = g.get("ehc_audit")
    return state


def _fhir_path() -> str | None:
    """The path relative to the FHIR base, or None for a request outside /fhir."""
    if not has_request_context():
        return None
    p = request.path
    if p == "/fhir" or p.startswith("/fhir/"):
        return p[len("/fhir"):].strip("/")
    return None


def _diagnostics(response: Response) -> str | None:
    if response.status_code < 400 or not response.is_json:
        return None
    body: Any = response.get_json(silent=True) or {}
    issues = body.get("issue") if isinstance(body, dict) else None
    if issues and isinstance(issues[0], dict):
        return str(issues[0].get("diagnostics") or issues[0].get("code") or "")[:1000] or None
    return None


def init_app(app: Flask, svc: Services) -> None:
    from app.audit.web import bp

    # The node's SM2 signing keys sign the checkpoints; the card subsystem (attached before us) owns them.
    keys: Any = getattr(svc.extensions.get("ehc"), "signing", None)
    if keys is None:
        log.warning("audit: no signing keys of the node (the card subsystem is not attached): no checkpoints")
    writer, sealer = build_trail(svc, keys=keys)
    trail = AuditTrail(svc, writer, sealer)
    svc.extensions["audit"] = trail
    svc.access_listeners.append(trail.on_access)
    for name in ("read", "created", "updated", "deleted"):
        svc.events.subscribe(name, trail.on_store)
    app.before_request(trail.before)
    app.after_request(trail.after)
    app.teardown_request(trail.teardown)
    app.register_error_handler(AuditWriteError, lambda _err: _unavailable())
    app.register_blueprint(bp)
    try:
        # Start-up recovery: seal what is pending, and recover what a process that died left behind.
        result = sealer.seal(wait_seconds=5.0)
        if result and result.recovered:
            log.warning("audit: start-up recovered %s event(s) left by a process that died", result.recovered)
    except Exception:
        log.exception("audit: start-up sealing failed; the background sealer will retry")
