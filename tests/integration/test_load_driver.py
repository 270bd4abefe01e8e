"""The load driver of the benchmarks (scripts/load/drive.mjs): each scenario runs against a live server with auth
on and reports what it did, and a request that does not do what the scenario expects is counted as an error,
so that a benchmark figure is never a count of failures."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import bearer, register, stored_token
from tests.integration.test_mpi_registration import id_number, patient

DRIVER = Path(__file__).resolve().parents[2] / "scripts" / "load" / "drive.mjs"
CRUD = ["create_patient", "read_patient", "update_patient", "search_patient_identifier", "create_observation",
        "search_observation", "delete_observation"]


def drive(live: str, tmp_path: Path, scenario: str, *options: str, duration: str = "2s") -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "the load driver needs Node (Debian's nodejs)"
    out = tmp_path / f"{scenario}.json"
    proc = subprocess.run([node, str(DRIVER), "--base", f"{live}/fhir", "--scenario", scenario, "--vus", "2",
                           "--duration", duration, "--summary", str(out), *options],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, Any] = json.loads(out.read_text())
    assert f"{summary['total_requests']} requests" in proc.stdout
    return summary


def counts(summary: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {o["op"]: (o["count"], o["errors"]) for o in summary["ops"]}


def test_crud_with_client_credentials(live: str, svc: Any, tmp_path: Path) -> None:
    client = register(svc, "system/*.cruds")
    s = drive(live, tmp_path, "crud", f"--token-url={live}/oauth/token", f"--client-id={client['client_id']}",
              f"--client-secret={client['client_secret']}")  # after "=": an id or secret may start with "-"
    done = counts(s)
    assert list(done) == CRUD
    iterations = done["create_patient"][0]
    assert iterations >= 2 and s["errors"] == 0
    assert all(n in (iterations, iterations - 1) and errors == 0 for n, errors in done.values())  # the last may stop
    assert s["total_requests"] == sum(n for n, _ in done.values())
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p95"] <= s["latency_ms"]["max"]
    assert sum(m["ok"] for m in s["minutes"]) == s["total_requests"]  # the token requests are not measured


def test_a_refused_request_is_an_error(live: str, svc: Any, tmp_path: Path) -> None:
    s = drive(live, tmp_path, "crud", "--token", stored_token(svc, "system/Patient.r"), duration="1s")
    assert counts(s)["create_patient"] == (s["total_requests"], s["total_requests"])  # 403: nothing else tried
    assert s["minutes"][0]["other"] == s["total_requests"]


def test_read(live: str, svc: Any, tmp_path: Path) -> None:
    s = drive(live, tmp_path, "read", "--token", stored_token(svc, "system/Patient.cr"), "--read-pool", "5")
    assert counts(s)["read_patient"][0] > 10 and s["errors"] == 0


def test_qrcode_and_one_time_verify(live: str, svc: Any, tmp_path: Path) -> None:
    token = stored_token(svc, "system/*.cruds")
    created = requests.post(f"{live}/fhir/Patient", json=patient(id_number("110101", "1986-02-02", 41),
                                                                   name="载一", born="1986-02-02"),
                            headers=bearer(token), timeout=30)
    assert created.status_code == 201, created.text
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([created.json()["id"]]))
    s = drive(live, tmp_path, "qrcode", "--token", token, "--input", str(ids), "--image", "false", duration="1s")
    assert s["total_requests"] > 2 and s["errors"] == 0

    def issued() -> str:
        r = requests.post(f"{live}/fhir/Patient/{created.json()['id']}/$ehc-qrcode", headers=bearer(token),
                          json={"resourceType": "Parameters", "parameter": [{"name": "image", "valueBoolean": False}]},
                          timeout=30)
        return str(next(p["valueString"] for p in r.json()["parameter"] if p["name"] == "token"))

    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([issued() for _ in range(3)]))
    first = drive(live, tmp_path, "verify", "--token", token, "--input", str(tokens), duration="30s")
    assert (first["total_requests"], first["errors"]) == (3, 0)  # each once, then done before the 30 s
    again = drive(live, tmp_path, "verify", "--token", token, "--input", str(tokens))
    assert (again["total_requests"], again["errors"]) == (3, 3)  # a spent nonce is not valid twice


@pytest.mark.parametrize("flags, message", [
    (["--scenario", "nope"], "unknown --scenario nope"),
    (["--vus", "0"], "--vus must be a positive integer"),
    (["--duration", "soon"], "--duration: say 60s"),
    (["--scenario", "verify"], "needs --input"),
    (["--client-id", "-x1"], 'give a value that starts with "-" as --flag=value'),
])
def test_bad_flags(flags: list[str], message: str) -> None:
    node = shutil.which("node")
    assert node
    proc = subprocess.run([node, str(DRIVER), "--base", "http://127.0.0.1:9/fhir", *flags], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
