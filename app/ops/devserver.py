"""The request handler of `ehc serve --dev` (werkzeug's development server), with the two changes that
app/ops/worker.py makes to gunicorn: a raw UTF-8 request target is read as its percent-encoded form (werkzeug
alone splits such a line at the bytes A0 and 85, which 张 and many other characters contain, and answers
"Bad request syntax"), a target with other bytes outside ASCII is refused, and every request the server
refuses itself gets a FHIR OperationOutcome instead of an HTML page."""

from __future__ import annotations

from contextlib import suppress
from http import HTTPStatus

from werkzeug.serving import WSGIRequestHandler

from app.ops.worker import OUTCOME_TYPE, NonUtf8Target, iri_to_uri, outcome_body

_CODES = {400: "structure", 414: "too-long", 431: "too-long", 501: "not-supported", 505: "not-supported"}


class DevRequestHandler(WSGIRequestHandler):
    raw_requestline: bytes

    def parse_request(self) -> bool:
        parts = self.raw_requestline.split(b" ", 2)
        if len(parts) == 3 and not parts[1].isascii():
            with suppress(UnicodeDecodeError):  # not UTF-8: refused below, once the line is read
                parts[1] = iri_to_uri(parts[1])
                self.raw_requestline = b" ".join(parts)
        if not super().parse_request():
            return False
        if not self.path.isascii():
            self.send_error(400, str(NonUtf8Target(self.raw_requestline)))
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        body = outcome_body(_CODES.get(code, "exception" if code >= 500 else "invalid"), message or phrase)
        self.log_error("code %d, message %s", code, phrase)  # not the message: it may quote the request line
        if self.request_version == "HTTP/0.9":  # a line that is no request: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        self.send_response(code, phrase)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", OUTCOME_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(body)
