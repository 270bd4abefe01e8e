"""Operations conventions: /healthz and /readyz, Prometheus /metrics, one JSON log line per request without
personal data."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from app.ops.health import check_database
from app.ops.logging import JsonFormatter, redact
from app.ops.routes import fhir_route
from app.store.database import DatabaseHandle
from app.store.embedded import free_port
from tests.integration.test_mpi_registration import id_number, patient, post

TYPES = {"Patient", "Observation"}


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition text."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture()
def access_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ehc.access")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_liveness_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.json
    assert r.json["status"] == "ready"
    assert r.json["checks"]["database"]["ok"] and r.json["checks"]["keys"]["ok"]


def test_readiness_fails_fast_when_the_database_is_away():
    handle = DatabaseHandle(f"mongodb://127.0.0.1:{free_port()}/", "ehc")
    t0 = time.monotonic()
    ok, detail = check_database(type("S", (), {"handle": handle})())
    assert not ok and "not reachable" in detail
    assert time.monotonic() - t0 < 2.5
    handle.close()


def test_metrics_count_requests_by_interaction_and_type(client):
    created = post(client, "Patient", patient(id_number("110101", "1985-05-05", 41), name="孟一", born="1985-05-05"))
    assert created.status_code == 201
    before = client.get("/metrics").get_data(as_text=True)
    reads = metric(before, "ehc_http_requests_total", interaction="read", resource_type="Patient", status="200") or 0
    for _ in range(3):
        assert client.get(f"/fhir/Patient/{created.json['id']}").status_code == 200
    assert client.get("/fhir/Patient/does-not-exist").status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "ehc_http_requests_total", interaction="read", resource_type="Patient",
                  status="200") == reads + 3
    assert metric(text, "ehc_http_requests_total", interaction="read", resource_type="Patient", status="404")
    assert metric(text, "ehc_http_requests_total", interaction="create", resource_type="Patient", status="201")
    assert metric(text, "ehc_http_request_duration_seconds_count", interaction="read", resource_type="Patient")
    assert (metric(text, "ehc_db_commands_total", command="find") or 0) > 0
    assert metric(text, "ehc_audit_backlog") is not None
    assert metric(text, "ehc_audit_spooled_segments") is not None


def test_metrics_of_token_grants_and_qr_verifications(client):
    text = client.get("/metrics").get_data(as_text=True)
    refused = metric(text, "ehc_oauth_token_grants_total", grant_type="client_credentials", result="401") or 0
    malformed = metric(text, "ehc_qr_verifications_total", result="malformed") or 0
    client.post("/oauth/token", data={"grant_type": "client_credentials"},
                headers={"Authorization": "Basic bm9ib2R5Om5vdGhpbmc="})
    r = post(client, "$ehc-verify", {"resourceType": "Parameters",
                                     "parameter": [{"name": "token", "valueString": "EHC1:nonsense"}]})
    assert r.status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "ehc_oauth_token_grants_total", grant_type="client_credentials",
                  result="401") == refused + 1
    assert metric(text, "ehc_qr_verifications_total", result="malformed") == malformed + 1


def test_one_json_line_per_request_without_personal_data(client, access_log):
    number = id_number("110101", "1979-07-07", 71)
    r = post(client, "Patient", patient(number, name="罗一", born="1979-07-07"))
    pid = r.json["id"]
    client.get(f"/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.3|{number}&phone=13912345678")
    client.get(f"/fhir/Patient/{pid}", headers={"X-Request-Id": "abc-123"})
    lines = [json.loads(x) for x in access_log.getvalue().splitlines()]
    assert [(x["method"], x["route"], x["status"]) for x in lines] == [
        ("POST", "/fhir/Patient", 201), ("GET", "/fhir/Patient", 200), ("GET", "/fhir/Patient/{id}", 200)]
    assert lines[2]["request_id"] == "abc-123" and lines[2]["interaction"] == "read"
    assert all(x["duration_ms"] >= 0 and x["logger"] == "ehc.access" for x in lines)
    text = access_log.getvalue()
    assert number not in text and "13912345678" not in text and pid not in text


def test_request_id_is_answered_and_made_up_when_missing_or_unsafe(client):
    assert client.get("/healthz", headers={"X-Request-Id": "req-42"}).headers["X-Request-Id"] == "req-42"
    made = client.get("/healthz", headers={"X-Request-Id": "bad id <with> spaces"}).headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_redaction_of_id_numbers_and_phones():
    text = redact("GET /fhir/Patient?identifier=x|11010119900307867X&phone=+86 13800138000 legacy 110101900307867")
    assert "11010119900307867X" not in text and "13800138000" not in text and "110101900307867" not in text
    assert redact("Patient/0123456789abcdef version 12") == "Patient/0123456789abcdef version 12"


def test_route_templates_never_carry_values():
    assert fhir_route("GET", "/Patient/abc/_history/2", TYPES).template == "/fhir/Patient/{id}/_history/{vid}"
    assert fhir_route("POST", "/Patient/abc/$ehc-qrcode", TYPES, {"ehc-qrcode"}).interaction == "$ehc-qrcode"
    assert fhir_route("GET", "/Evil123/x", TYPES).template == "/fhir/?/{id}"
    assert fhir_route("POST", "/$whatever", TYPES, {"ehc-verify"}).interaction == "$?"
    assert fhir_route("POST", "/", TYPES).interaction == "batch/transaction"


@pytest.mark.parametrize(("base", "root"), [("https://ehc.example.cn/fhir", "https://ehc.example.cn"),
                                            ("https://ehc.example.cn", "https://ehc.example.cn"),
                                            ("https://ehc.example.cn/api/r4", "https://ehc.example.cn"),
                                            ("http://10.0.0.5:8080/ehc/fhir", "http://10.0.0.5:8080/ehc")])
def test_oauth_endpoints_follow_any_base_url(settings, base, root):
    from app import create_app

    app = create_app(settings, base_url=base)
    try:
        conf = app.test_client().get("/.well-known/smart-configuration").json
        assert conf["token_endpoint"] == f"{root}/oauth/token"
        assert conf["authorization_endpoint"] == f"{root}/oauth/authorize"
        assert conf["issuer"] == base
    finally:
        app.extensions["ehc"].handle.close()
