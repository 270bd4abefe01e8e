"""Three real nodes on loopback for the federation tests: the national node (00), Beijing (11) and Shanghai
(31), each its own app, data directory and database (on the one test database server), served by a threaded
werkzeug server on a fixed 127.0.0.1 port so that a node can be stopped and started again where its peers
know it. Trust is set up the way an operator does it: `ehc nodes add` on each side.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from pymongo import MongoClient
from werkzeug.serving import make_server

from app.auth.consent import policy_rule
from app.auth.plugin import auth_state
from app.auth.registration import register_client
from app.cli import main as ehc
from app.config import Settings
from app.store.embedded import free_port
from app.synthetic import resident_id

FJ = "application/fhir+json"
ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
EHC_SYSTEM = "urn:oid:2.16.156.10011.1.19"


class Node:
    def __init__(self, province: str, db_uri: str, data_dir: Path, national_url: str | None = None,
                 auth_required: bool = True) -> None:
        from app import create_app

        self.province = province
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = f"{self.url}/fhir"
        self.db_uri = db_uri
        self.data_dir = data_dir
        self.national_url = national_url
        self.settings = Settings(mongodb_uri=db_uri, province=province, data_dir=data_dir,
                                 auth_required=auth_required, national_url=national_url)
        self.app = create_app(self.settings)
        self.app.testing = True
        self.svc = self.app.extensions["ehc"]
        st = auth_state(self.svc)
        st.token_limiter.limit.rate = 10_000.0
        st.token_limiter.limit.burst = 10_000
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {"EHC_PROVINCE": self.province, "EHC_MONGODB_URI": self.db_uri, "EHC_DATA_DIR": str(self.data_dir)}
        if self.national_url:
            env["EHC_NATIONAL_URL"] = self.national_url
        return env

    def start(self) -> Node:
        for _ in range(50):
            try:
                self._server = make_server("127.0.0.1", self.port, self.app, threaded=True)
                break
            except OSError:  # the port of a node just stopped is still in TIME_WAIT
                time.sleep(0.1)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def ehc(self, *args: str) -> Any:
        """Run the `ehc` command as this node's operator."""
        return CliRunner().invoke(ehc, list(args), env=self.env, catch_exceptions=False)

    def client(self, scopes: str, organization: str | None = None, name: str = "hospital") -> dict[str, Any]:
        return register_client(auth_state(self.svc).store, name=name, scopes=scopes, province=self.province,
                               organization=organization)

    def token(self, client: dict[str, Any], scope: str | None = None) -> str:
        r = requests.post(f"{self.url}/oauth/token", data={"grant_type": "client_credentials",
                                                           "scope": scope or client["scopes"]},
                          auth=(client["client_id"], client["client_secret"]), timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def close(self) -> None:
        self.stop()
        worker = self.svc.extensions.get("federation_worker")
        if worker is not None:
            worker.stopped.set()
        self.svc.handle.close()


def trusted(node: Node) -> list[str]:
    """The provinces a running node trusts, as its federation worker last read them (every second)."""
    return sorted(node.svc.extensions["federation"].registry.nodes())


def h(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": FJ, "Content-Type": FJ, **extra}


_SEQ = iter(range(1, 10_000))


def new_id_number(region: str = "110101") -> str:
    n = next(_SEQ) + (os.getpid() % 97) * 100
    return resident_id(region, date(1970 + n % 40, 1 + n % 12, 1 + n % 27), n, True)


def patient_body(number: str, family: str = "张", given: str = "伟", mrn: str | None = None) -> dict[str, Any]:
    idents = [{"system": ID_SYSTEM, "value": number}]
    if mrn:
        idents.append({"system": "urn:ehc:mrn:hosp", "value": mrn})
    birth = f"{number[6:10]}-{number[10:12]}-{number[12:14]}"
    return {"resourceType": "Patient", "identifier": idents, "name": [{"family": family, "given": [given]}],
            "gender": "male" if int(number[16]) % 2 else "female", "birthDate": birth}


def card_of(patient: dict[str, Any]) -> str:
    return next(i["value"] for i in patient["identifier"] if i["system"] == EHC_SYSTEM and i.get("use") != "old")


def observation_body(pid: str, code: str = "2345-7", value: float = 5.4) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": value, "unit": "mmol/L"}}


def consent_body(pid: str, actor: dict[str, Any], status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"}, "policyRule": policy_rule(),
        "provision": {"type": "permit", "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP"}]}, "reference": actor}],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                    "code": "access"}]}]},
    }


def wait_for(check: Callable[[], Any], timeout: float = 15.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        out = check()
        if out or time.monotonic() > deadline:
            return out
        time.sleep(every)


def database_names(mongo_server: str, label: str) -> dict[str, str]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    out = {}
    client: MongoClient = MongoClient(mongo_server)
    for p in ("00", "11", "31"):
        name = re.sub(r"[^a-zA-Z0-9]", "_", f"f_{worker}_{label}_{p}")[:60]
        client.drop_database(name)
        out[p] = mongo_server.rstrip("/") + "/" + name
    client.close()
    return out


@pytest.fixture(scope="module")
def nodes(mongo_server: str, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[dict[str, Node]]:
    """The three nodes, running and trusting each other (national <-> 11, national <-> 31)."""
    uris = database_names(mongo_server, request.module.__name__.split(".")[-1][-12:])
    national = Node("00", uris["00"], tmp_path_factory.mktemp("node00")).start()
    started = {"00": national}
    for p in ("11", "31"):  # a province node knows the national node from EHC_NATIONAL_URL
        started[p] = Node(p, uris[p], tmp_path_factory.mktemp(f"node{p}"), national_url=national.base).start()
    try:
        for p in ("11", "31"):
            r = started["00"].ehc("nodes", "add", "--province", p, "--url", started[p].base)
            assert r.exit_code == 0, r.output
            # node 11's operator relies on EHC_NATIONAL_URL, node 31's names the URL too
            url = ["--url", started["00"].base] if p == "31" else []
            r = started[p].ehc("nodes", "add", "--province", "00", *url)
            assert r.exit_code == 0, r.output
        expected = {"00": {"11", "31"}, "11": {"00"}, "31": {"00"}}
        assert wait_for(lambda: all(set(trusted(started[p])) == expected[p] for p in started), timeout=10)
        yield started
    finally:
        for node in started.values():
            node.close()


def unique(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex[:10]


__all__ = ["nodes"]


LAB = {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}


def post_resource(node: Node, token: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a resource at a node with a token; the stored resource (201 or 200 expected)."""
    r = requests.post(f"{node.base}/{body['resourceType']}", json=body, headers=h(token), timeout=20)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def glucose(pid: str, value: float, day: str, reference_range: bool = False) -> dict[str, Any]:
    """A laboratory glucose Observation of a patient (with the normal range when asked: the portal's chart)."""
    obs: dict[str, Any] = {
        "resourceType": "Observation", "status": "final", "category": [{"coding": [LAB]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": day,
        "valueQuantity": {"value": value, "unit": "mmol/L"}}
    if reference_range:
        obs["referenceRange"] = [{"low": {"value": 3.9}, "high": {"value": 6.1}}]
    return obs
