"""The HTTP edge of `ehc serve` (gunicorn, app/ops/worker.py) and of `ehc serve --dev` (werkzeug,
app/ops/devserver.py), spoken to over a raw socket: raw UTF-8 in the request target (what curl sends for
`?name=张伟`) is read as UTF-8, and every request the HTTP server itself refuses gets a FHIR OperationOutcome,
never an HTML page."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from werkzeug.serving import make_server

from app.ops.devserver import DevRequestHandler
from tests.live import EhcServe

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def server(db_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EhcServe]:
    live = EhcServe(tmp_path_factory.mktemp("serve"), db_uri, workers=1, threads=2,
                    env={"EHC_AUTH_REQUIRED": "false"}).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def dev_server(app: Any) -> Iterator[Any]:
    """What `ehc serve --dev` runs: werkzeug's threaded server with our request handler."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=DevRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.root = f"http://127.0.0.1:{server.server_port}"
    server.port = server.server_port
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(5)


def exchange(server: Any, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes as one request; the status, headers (lower-case names) and body of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if sep and length is not None and len(body) >= length:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(server: Any, target: bytes, extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    return exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra
                    + b"Connection: close\r\n\r\n")


def outcome(status_headers_body: tuple[int, dict[str, str], bytes]) -> dict[str, Any]:
    _, headers, body = status_headers_body
    assert headers["content-type"].startswith("application/fhir+json"), (headers, body[:200])
    parsed: dict[str, Any] = json.loads(body)
    assert parsed["resourceType"] == "OperationOutcome" and parsed["issue"][0]["severity"] == "error"
    return parsed


def test_raw_utf8_in_the_query_string_searches_for_what_was_typed(server):
    zhang = {"resourceType": "Patient", "name": [{"family": "张", "given": ["伟"], "text": "张伟"}]}
    other = {"resourceType": "Patient", "name": [{"family": "李", "given": ["娜"], "text": "李娜"}]}
    pid = requests.post(f"{server.root}/fhir/Patient", json=zhang, headers=FHIR_JSON, timeout=30).json()["id"]
    requests.post(f"{server.root}/fhir/Patient", json=other, headers=FHIR_JSON, timeout=30).raise_for_status()
    status, headers, body = get(server, "/fhir/Patient?name=张伟".encode())
    assert status == 200, body[:300]
    bundle = json.loads(body)
    assert [e["resource"]["id"] for e in bundle["entry"]] == [pid]
    assert parse_qs(urlsplit(bundle["link"][0]["url"]).query)["name"] == ["张伟"]
    # the same bytes percent-encoded give the same answer; raw UTF-8 in the path is read as UTF-8 too
    assert requests.get(f"{server.root}/fhir/Patient", params={"name": "张伟"}, timeout=30).json()["total"] == 1
    status, _, body = get(server, "/fhir/Patient/张".encode())
    assert status == 404 and "Patient/张" in outcome((status, _, body))["issue"][0]["diagnostics"]


def test_bytes_that_are_not_utf8_get_an_operation_outcome_that_says_what_to_do(server):
    answer = get(server, "/fhir/Patient?name=张伟".encode("gbk"))
    assert answer[0] == 400
    diagnostics = outcome(answer)["issue"][0]["diagnostics"]
    assert "UTF-8" in diagnostics and "percent-encode" in diagnostics
    overlong_slash = get(server, b"/fhir/Patient?name=\xc0\xaf")  # "/" written in two bytes: not UTF-8
    assert overlong_slash[0] == 400 and outcome(overlong_slash)


@pytest.mark.parametrize(("raw", "status", "code"), [
    (b"GARBAGE\r\n\r\n", 400, "structure"),
    (b"GET /fhir/metadata\r\nHost: x\r\n\r\n", 400, "structure"),
    (b"GET /fhir/Patient?name=a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "structure"),
    (b"GET /fhir/metadata HTTP/9.9\r\nHost: x\r\n\r\n", 400, "structure"),
    (b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "structure"),
    (b"GET /fhir/Patient?name=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "too-long"),
    (b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "too-long"),
])
def test_requests_gunicorn_refuses_get_an_operation_outcome_never_html(server, raw, status, code):
    answer = exchange(server, raw)
    assert answer[0] == status and b"<html" not in answer[2]
    assert outcome(answer)["issue"][0]["code"] == code


def test_a_malformed_chunked_body_is_a_client_error_not_a_500(server):
    raw = (b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\n"
           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
    answer = exchange(server, raw)
    assert answer[0] == 400 and b"<html" not in answer[2]
    assert "could not be read" in outcome(answer)["issue"][0]["diagnostics"]


def test_a_malformed_request_line_is_named_in_the_answer_but_not_in_the_log(server):
    id_number = "11010519491231002X"
    answer = get(server, f"/fhir/Patient?identifier={id_number}&name=\x7f".encode())
    assert answer[0] == 400
    diagnostics = outcome(answer)["issue"][0]["diagnostics"]
    assert "request line" in diagnostics and id_number in diagnostics
    deadline = time.monotonic() + 5
    while "Invalid request" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log.read_text()
    assert "Invalid request from ip=127.0.0.1: InvalidRequestLine" in log and id_number not in log


def test_the_dev_server_reads_raw_utf8_too_and_answers_refusals_in_fhir(dev_server):
    # 张 is E5 BC A0: werkzeug alone splits the request line at A0 and answers HTML
    li = {"resourceType": "Patient", "name": [{"family": "张", "given": ["丽"], "text": "张丽"}]}
    pid = requests.post(f"{dev_server.root}/fhir/Patient", json=li, headers=FHIR_JSON, timeout=30).json()["id"]
    status, _, body = get(dev_server, "/fhir/Patient?name=张丽".encode())
    assert status == 200, body[:300]
    assert [e["resource"]["id"] for e in json.loads(body)["entry"]] == [pid]
    gbk = get(dev_server, "/fhir/Patient?name=张丽".encode("gbk"))
    assert gbk[0] == 400 and "UTF-8" in outcome(gbk)["issue"][0]["diagnostics"]
    for raw in (b"GARBAGE\r\n\r\n", b"GET /fhir/metadata HTTP/9.9\r\nHost: x\r\n\r\n",
                b"GET /fhir/Patient?name=" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
        answer = exchange(dev_server, raw)
        assert answer[0] in (400, 414, 505) and b"<html" not in answer[2].lower() and outcome(answer)
