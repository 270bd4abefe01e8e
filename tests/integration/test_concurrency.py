"""Races against a real multi-process server (gunicorn, 2 workers): concurrent updates with the same
If-Match give exactly one success; parallel conditional creates with the same criteria create one."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.live import LiveServer

FJ = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def server(db_uri, tmp_path_factory):
    live = LiveServer(db_uri, tmp_path_factory.mktemp("live")).start()
    yield live
    live.stop()


def test_same_if_match_exactly_one_wins(server):
    s = requests.Session()
    pat = s.post(f"{server.base}/Patient", data=json.dumps({"resourceType": "Patient", "gender": "male"}),
                 headers=FJ).json()
    pid = pat["id"]

    def attempt(i: int) -> int:
        body = {**pat, "name": [{"family": f"writer{i}"}]}
        r = requests.put(f"{server.base}/Patient/{pid}", data=json.dumps(body),
                         headers={**FJ, "If-Match": 'W/"1"'}, timeout=60)
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(attempt, range(16)))
    assert codes.count(200) == 1, codes
    assert codes.count(412) == 15, codes
    final = s.get(f"{server.base}/Patient/{pid}").json()
    assert final["meta"]["versionId"] == "2"
    hist = s.get(f"{server.base}/Patient/{pid}/_history").json()
    assert [e["response"]["etag"] for e in hist["entry"]] == ['W/"2"', 'W/"1"']


def test_updates_without_if_match_lose_nothing(server):
    pid = requests.post(f"{server.base}/Patient", data=json.dumps({"resourceType": "Patient"}), headers=FJ).json()["id"]

    def attempt(i: int) -> int:
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": f"w{i}"}]}
        return requests.put(f"{server.base}/Patient/{pid}", data=json.dumps(body), headers=FJ, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(12)))
    assert codes == [200] * 12
    final = requests.get(f"{server.base}/Patient/{pid}").json()
    assert final["meta"]["versionId"] == "13"  # every write is a version, none overwrote another's number


def test_parallel_conditional_creates_make_one(server):
    body = json.dumps({"resourceType": "Organization", "name": "并发医院",
                       "identifier": [{"system": "urn:test:org", "value": "race-1"}]})

    def attempt(_i: int) -> tuple[int, str]:
        r = requests.post(f"{server.base}/Organization", data=body,
                          headers={**FJ, "If-None-Exist": "identifier=urn:test:org|race-1"}, timeout=60)
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(attempt, range(12)))
    codes = [c for c, _ in results]
    assert codes.count(201) == 1, codes
    assert codes.count(200) == 11, codes
    assert len({i for _, i in results}) == 1
    found = requests.get(f"{server.base}/Organization?identifier=urn:test:org|race-1").json()
    assert found["total"] == 1
