"""Parallel registrations of one resident against a real HTTP server (threaded werkzeug): exactly one 201,
the rest 200, and one Patient carrying every hospital's record number."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration.test_mpi_registration import ID_SYS, id_number
from tests.live import serve_in_thread

N = 12


@pytest.fixture(scope="module")
def base_url(app):
    with serve_in_thread(app) as url:
        yield url + "/fhir"


def test_parallel_registration_of_one_resident(base_url):
    number = id_number("120101", "1988-02-02", 41)
    barrier = threading.Barrier(N)

    def register(i: int) -> requests.Response:
        body = {"resourceType": "Patient", "name": [{"text": "韩梅梅"}], "gender": "male",
                "identifier": [{"system": ID_SYS, "value": number},
                               {"system": f"urn:ehc:mrn:hospital-{i}", "value": f"MRN-{i}"}]}
        barrier.wait()  # all requests leave together
        return requests.post(f"{base_url}/Patient", json=body, timeout=60,
                             headers={"Content-Type": "application/fhir+json"})

    with ThreadPoolExecutor(N) as pool:
        answers = list(pool.map(register, range(N)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * (N - 1) + [201], [r.text[:300] for r in answers if r.status_code >= 300]
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 1
    pid = ids.pop()
    final = requests.get(f"{base_url}/Patient/{pid}", timeout=10).json()
    mrns = {i["system"] for i in final["identifier"] if i["system"].startswith("urn:ehc:mrn:")}
    assert mrns == {f"urn:ehc:mrn:hospital-{i}" for i in range(N)}
    assert final["meta"]["versionId"] == str(N)
    found = requests.get(f"{base_url}/Patient", params={"identifier": f"{ID_SYS}|{number}"}, timeout=10).json()
    assert [e["resource"]["id"] for e in found.get("entry", []) if e["search"]["mode"] == "match"] == [pid]


def test_parallel_registrations_of_different_residents_do_not_block(base_url):
    def register(i: int) -> int:
        body = {"resourceType": "Patient", "name": [{"text": f"居民{i}"}],
                "identifier": [{"system": ID_SYS, "value": id_number("130102", "1970-01-01", 100 + 2 * i)}]}
        return requests.post(f"{base_url}/Patient", json=body, timeout=60,
                             headers={"Content-Type": "application/fhir+json"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(register, range(16))) == [201] * 16
