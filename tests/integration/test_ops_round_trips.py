"""Database commands of the card and index operations in steady state (tests/round_trips.py counts them; the
audit trail's group-committed writes are budgeted apart): $ehc-verify spends the nonce and nothing else (the
card's patient and status come from per-process caches), $ehc-qrcode reads the Patient once (the read the
route table makes for the disclosure gate), $ihe-pix reads the claim and the Patient."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.config import Settings
from tests.integration.test_mpi_registration import id_number, patient, post
from tests.round_trips import counter

BUDGET = {"verify": ["insert ehc_nonces {1 doc}"],
          "qrcode": ["find Patient {_id}"],
          "pix": ["find mpi_claims {_id}", "find Patient {_id}"]}


@pytest.fixture(scope="module")
def ops_app(settings: Settings) -> Any:
    counter()  # before any client of the app exists
    from app import create_app

    flask_app = create_app(settings)
    flask_app.testing = True
    yield flask_app
    flask_app.extensions["ehc"].handle.close()


@pytest.fixture(scope="module")
def costs(ops_app: Any) -> dict[str, list[list[str]]]:
    client = ops_app.test_client()
    db_name = ops_app.extensions["ehc"].handle.db.name
    created = post(client, "Patient", patient(id_number("110101", "1985-05-05", 51), name="卫三", born="1985-05-05",
                                              extra=[{"system": "urn:ehc:mrn:rt-hospital", "value": "RT-51"}]))
    assert created.status_code == 201, created.json
    pid = created.json["id"]
    mrn = next(i for i in created.json["identifier"] if i["system"].startswith("urn:ehc:mrn:"))

    def qrcode() -> Any:
        return post(client, f"Patient/{pid}/$ehc-qrcode",
                    {"resourceType": "Parameters", "parameter": [{"name": "image", "valueBoolean": False}]})

    def verify() -> Any:
        token = qrcode().json["parameter"][0]["valueString"]
        with counter().recording(db_name) as found:
            r = post(client, "$ehc-verify", {"resourceType": "Parameters",
                                             "parameter": [{"name": "token", "valueString": token}]})
        assert r.status_code == 200 and '"valueBoolean": true' in json.dumps(r.json), r.json
        return found

    def pix() -> Any:
        source = f"{mrn['system']}|{mrn['value']}"
        return client.get("/fhir/Patient/$ihe-pix", query_string={"sourceIdentifier": source})

    seen: dict[str, list[list[str]]] = {"verify": [], "qrcode": [], "pix": []}
    for rnd in range(4):  # the first round warms the caches up
        found = verify()
        for name, call in (("qrcode", qrcode), ("pix", pix)):
            with counter().recording(db_name) as got:
                assert call().status_code == 200
            if rnd:
                seen[name].append([str(c) for c in got])
        if rnd:
            seen["verify"].append([str(c) for c in found])
    return seen


@pytest.mark.parametrize("op", sorted(BUDGET))
def test_operation_round_trips(costs: dict[str, list[list[str]]], op: str) -> None:
    assert min(costs[op], key=len) == BUDGET[op], costs[op]
