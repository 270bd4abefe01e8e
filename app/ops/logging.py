"""Structured logs: one JSON line per request on stderr, and every other `ehc.*` log line as JSON too.

A request line: {"ts", "level": "info", "logger": "ehc.access", "msg": "request", "request_id", "method",
"route" (the template, e.g. /fhir/Patient/{id}: never the raw path), "interaction", "resource_type", "status",
"duration_ms", "client_id"}. The request id is the caller's `X-Request-Id` when it is a short token, a new
one otherwise; the response carries it back.

No personal data: the raw path and query never reach a log line, and every message passes a filter that
replaces resident ID numbers (GB 11643, 15 or 18 characters) and mainland mobile numbers with `***`. The
gunicorn access log is left off (`ehc serve` does not enable it) and the werkzeug one (`ehc serve --dev`) is
muted: this line replaces both.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request

from app.ops.web import elapsed, mark_start, request_route

ACCESS = logging.getLogger("ehc.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])[1-8]\d{5}(?:(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}"
                        r"[\dXx]|\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3})(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d{9}(?!\d)")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    """The text with ID numbers and mobile phone numbers replaced by ***."""
    return _PHONE.sub("***", _ID_NUMBER.sub("***", text))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(stream: Any = None) -> logging.Handler:
    """JSON lines for the `ehc` loggers on stderr (once per process); returns the handler."""
    root = logging.getLogger("ehc")
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return handler
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its access line holds the raw path and query
    return handler


def _before() -> None:
    mark_start()
    given = request.headers.get("X-Request-Id", "")
    g.ehc_request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def _after(response: Response) -> Response:
    route = request_route()
    request_id = g.get("ehc_request_id") or uuid.uuid4().hex
    response.headers["X-Request-Id"] = request_id
    principal = g.get("ehc_principal")
    ACCESS.info("request", extra={
        "request_id": request_id,
        "method": request.method,
        "route": route.template,
        "interaction": route.interaction,
        "resource_type": route.resource_type,
        "status": response.status_code,
        "duration_ms": round(elapsed() * 1000, 2),
        "client_id": getattr(principal, "client_id", None),
    })
    return response


def init_app(app: Flask) -> None:
    configure()
    app.before_request(_before)
    app.after_request(_after)
