"""The gunicorn worker that `ehc serve` runs: gunicorn's gthread worker with two changes at the HTTP edge.

1. **Raw UTF-8 in the request target.** curl sends `?name=张伟` as typed: the bytes E5 BC A0 E4 BC 9F in the
   request line. RFC 9112 asks for percent-encoding, and gunicorn refuses every byte outside printable ASCII
   ("Invalid HTTP request line"). A target whose bytes are UTF-8 is read as the IRI it is and mapped to its URI
   (RFC 3987 section 3.1: each non-ASCII byte percent-encoded) before gunicorn checks it, so the application
   sees `name=%E5%BC%A0%E4%BC%9F`, exactly what a client that encodes sends. Bytes that are not UTF-8 (GBK,
   Latin-1) stay refused: what they meant cannot be known. Only ASCII `%` and hex digits are added, so nothing
   the mapping writes can end the line, split the target or change the method or version.
2. **Errors that gunicorn answers itself** (a malformed request line, a request line or header block that is
   too large, a bad chunk, ...) are a FHIR OperationOutcome (`application/fhir+json`) with gunicorn's status,
   instead of its HTML page. Its log line names the kind of error and the client address, never the request
   line, which may hold a name or an ID number.

And two changes of the process:
- once the application is loaded, `app.ops.heap.settle_heap` takes what start-up made out of the collector's
  scans;
- the first quit signal ends the worker, and later ones do nothing, so they cannot cut its exit hooks short.
  Ctrl-C reaches every process of the group, and the arbiter then sends each worker SIGQUIT as well. In
  gunicorn's worker, that second signal raised SystemExit inside whichever exit hook was running: the audit
  spool's last shipment, or the removal of the worker's heartbeat (one stop in five, seen on 2026-11-30). A
  worker that hangs while exiting is still killed by the arbiter after its graceful timeout.

Hook (1) lives in the pure-Python parser, so `ehc serve` sets `http_parser = "python"` (gunicorn_h1c, the
optional C parser, would skip it).
"""

from __future__ import annotations

import json
import signal
from http import HTTPStatus
from ssl import SSLError
from typing import Any

from gunicorn import util
from gunicorn.http.errors import (
    ConfigurationProblem,
    ExpectationFailed,
    ForbiddenProxyRequest,
    InvalidRequestLine,
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    LimitRequestHeaders,
    LimitRequestLine,
    ParseException,
    UnsupportedTransferCoding,
)
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.workers.gthread import ThreadWorker

from app.core.errors import Issue, operation_outcome
from app.ops.heap import settle_heap

WORKER_CLASS = "app.ops.worker.FhirWorker"
OUTCOME_TYPE = "application/fhir+json; charset=utf-8"
_DIAGNOSTICS_MAX = 300  # a request line may be 8 KB; the answer quotes its start

# (error, status, FHIR issue type), first match wins; the statuses are gunicorn's own.
_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (InvalidResponseHeader, 500, "exception"),  # the application's fault, not the client's
    (InvalidResponseHeaderName, 500, "exception"),
    (ConfigurationProblem, 500, "exception"),
    (UnsupportedTransferCoding, 501, "not-supported"),
    (LimitRequestLine, 414, "too-long"),
    (LimitRequestHeaders, 431, "too-long"),
    (ExpectationFailed, 417, "not-supported"),
    (ForbiddenProxyRequest, 403, "forbidden"),
    (SSLError, 403, "security"),
    (ParseException, 400, "structure"),  # every other request gunicorn cannot read
]


class NonUtf8Target(InvalidRequestLine):
    """A request target with bytes outside ASCII that are not UTF-8."""

    def __str__(self) -> str:
        return ("the request target has bytes that are neither ASCII nor UTF-8; percent-encode the query "
                "(e.g. curl -G --data-urlencode 'name=张伟')")


def iri_to_uri(target: bytes) -> bytes:
    """The target with each byte outside ASCII percent-encoded, when those bytes are UTF-8 (RFC 3987 3.1).

    Raises UnicodeDecodeError when they are not UTF-8 (overlong forms and surrogates included)."""
    if target.isascii():
        return target
    target.decode("utf-8")
    return b"".join(b"%%%02X" % b if b > 0x7F else bytes((b,)) for b in target)


class Utf8Request(Request):
    """gunicorn's request, reading a raw UTF-8 request target as its percent-encoded form."""

    def parse_request_line(self, line_bytes: bytes) -> None:
        parts = line_bytes.split(b" ", 2)
        if len(parts) == 3 and not parts[1].isascii():
            try:
                parts[1] = iri_to_uri(parts[1])
            except UnicodeDecodeError:
                raise NonUtf8Target(line_bytes) from None
            line_bytes = b" ".join(parts)
        super().parse_request_line(line_bytes)


def outcome_body(code: str, diagnostics: str) -> bytes:
    """An OperationOutcome with one error issue, as UTF-8 JSON; long diagnostics are cut."""
    if len(diagnostics) > _DIAGNOSTICS_MAX:
        diagnostics = diagnostics[:_DIAGNOSTICS_MAX] + "..."
    return json.dumps(operation_outcome([Issue(diagnostics, code)]), ensure_ascii=False).encode("utf-8")


def outcome_response(status: int, code: str, diagnostics: str) -> bytes:
    """A complete HTTP/1.1 response carrying one OperationOutcome issue; the connection closes after it."""
    body = outcome_body(code, diagnostics)
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nConnection: close\r\n"
            f"Content-Type: {OUTCOME_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


def classify(exc: BaseException) -> tuple[int, str]:
    """gunicorn's status for an error, with its FHIR issue type; 500 for anything it did not expect."""
    for kind, status, code in _ERRORS:
        if isinstance(exc, kind):
            return status, code
    return 500, "exception"


def _exiting_already(sig: int, frame: Any) -> None:
    """A quit signal to a worker that is exiting already."""


class FhirWorker(ThreadWorker):
    """gthread, with raw UTF-8 request targets read as UTF-8 and its own errors answered in FHIR."""

    def init_process(self) -> None:
        # gthread builds its parsers through gunicorn.http.get_parser, which has no setting for the message
        # class: set it on the parser class, in this worker process only (it serves nothing but this app).
        RequestParser.mesg_class = Utf8Request
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        settle_heap()

    def handle_quit(self, sig: int, frame: Any) -> None:
        """gunicorn's: the worker exits. A second quit signal would interrupt its exit hooks, so later ones
        do nothing (see the module's docstring)."""
        for quit_signal in (signal.SIGINT, signal.SIGQUIT):
            # A handler that does nothing, not SIG_IGN: a signal already pending for Python's handler would be
            # reported as "ignored due to race condition", with a traceback in the log.
            signal.signal(quit_signal, _exiting_already)
        super().handle_quit(sig, frame)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, code = classify(exc)
        ip = (addr or ("", -1))[0]
        if status >= 500:
            self.log.exception("Error handling a request from ip=%s (%s)", ip, type(exc).__name__)
            text = "the server could not handle the request"
        else:
            self.log.warning("Invalid request from ip=%s: %s (%d)", ip, type(exc).__name__, status)
            text = str(exc)
        try:
            util.write_nonblock(client, outcome_response(status, code, text))
        except Exception:  # the client may be gone; nothing is left to tell it
            self.log.debug("Failed to send the error response.")
