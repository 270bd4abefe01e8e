"""Posting lists stay bounded however long they grow (issue #12, no decay): a write rewrites at most one head
of `SEGMENT` ids; full heads are sealed into segments off the request path; a lookup still finds every id,
also under racing writers and rollers; the AuditEvents of a much-read patient and a name shared by many
residents are found whole."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from app.audit.chain import EVENTS, IndexCheck, verify
from app.store.keys import SEGMENT, KeyIndex, scan, segment_id
from tests.round_trips import Residents, patient_resource
from tests.sealing import seal_everything

FJ = "application/fhir+json"


@pytest.fixture()
def index(services: Any) -> KeyIndex:
    return KeyIndex(services.repo.db[f"keys_{uuid.uuid4().hex[:8]}"])


def largest(index: KeyIndex) -> int:
    return max(len(d.get("ids") or ()) for d in index.col.find({}))


def settle(index: KeyIndex) -> None:
    """Until the background roller has looked at every list it was handed."""
    index.roller.wait()


def test_a_long_list_is_sealed_into_segments_and_found_whole(index: KeyIndex) -> None:
    ids = [f"r{i:04d}" for i in range(3 * SEGMENT + 10)]
    for rid in ids:
        index.add(rid, ["Observation|r|Patient/p"])
    settle(index)
    assert sorted(index.lookup("Observation|r|Patient/p")) == ids
    assert index.col.find_one({"_id": segment_id("Observation|r|Patient/p", 0)}) is not None
    # no document holds much more than a segment: the head is looked at every CHECK_EVERY additions (plus
    # what arrives while the roller works)
    assert largest(index) <= 2 * SEGMENT
    # the head (the newest ids) first, and a limit reads only the segments it needs
    newest = index.lookup("Observation|r|Patient/p", limit=5)
    assert len(newest) == 5 and set(newest) <= set(ids[-2 * SEGMENT:])
    assert {k for k, _ in scan(index.col, "Observation|r|")} == {"Observation|r|Patient/p"}
    assert sorted(i for _, listed in scan(index.col, "Observation|r|") for i in listed) == ids


def test_removal_and_a_head_grown_by_bulk_writes(index: KeyIndex) -> None:
    key = "Patient|i|urn:x|1"
    index.col.insert_one({"_id": key, "ids": [f"b{i}" for i in range(2 * SEGMENT)]})  # as a bulk seed writes it
    assert len(index.lookup(key)) == 2 * SEGMENT  # found whole; the lookup hands the long head to the roller
    settle(index)
    assert len(index.col.find_one({"_id": key})["ids"]) == 0
    index.add("new", [key])
    index.remove("b0", [key])  # sealed already: stays a stale candidate, which readers re-check
    index.remove("new", [key])
    assert "new" not in index.lookup(key) and len(index.lookup(key)) == 2 * SEGMENT


def test_racing_writers_and_rollers_lose_no_id(index: KeyIndex) -> None:
    key = "AuditEvent|r|Patient/hot"
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(120):
                index.add(f"w{n}-{i:03d}", [key, f"AuditEvent|r|Patient/w{n}"])
                if i % 10 == 0:
                    index.roll(key)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    settle(index)
    assert sorted(index.lookup(key)) == sorted(f"w{n}-{i:03d}" for n in range(4) for i in range(120))
    for n in range(4):
        assert len(index.lookup(f"AuditEvent|r|Patient/w{n}")) == 120


def test_a_much_read_patient_keeps_every_audit_event_and_a_bounded_head(client: Any, services: Any) -> None:
    res = patient_resource(*Residents().next(), family="Hot")
    r = client.post("/fhir/Patient", json=res, headers={"Content-Type": FJ})
    assert r.status_code == 201, r.json
    pid = r.json["id"]
    reads = SEGMENT + 40
    for _ in range(reads):
        assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    found = client.get(f"/fhir/AuditEvent?patient=Patient/{pid}&_summary=count").json  # seals first
    assert found["total"] >= reads + 1  # every read and the create
    keys = services.repo.keys
    settle(keys)
    assert keys.col.find_one({"_id": segment_id(f"AuditEvent|r|Patient/{pid}", 0)}) is not None
    repo = services.repo
    check = IndexCheck(lambda d: repo.build_doc(EVENTS, d["_id"], d["vid"], d["ts"], d["res"], d["prov"]),
                       repo.keyed_codes(EVENTS))
    seal_everything(services.extensions["audit"].sealer)  # the search's own event: nothing in flight
    report = verify(repo.db, index=check)  # what `ehc audit verify` runs: it reads the segments too
    assert not [p for p in report.problems if p.kind == "index"], report.problems[:3]


def test_match_finds_residents_of_a_common_name_beyond_one_segment(client: Any, services: Any) -> None:
    created = []
    residents = Residents()
    for _ in range(SEGMENT + 5):
        res = patient_resource(*residents.next(), family="王")
        res["name"] = [{"text": "王芳"}]
        r = client.post("/fhir/Patient", json=res, headers={"Content-Type": FJ})
        assert r.status_code in (200, 201), r.json
        created.append(r.json["id"])
    index = services.extensions["mpi"]
    candidates = set(index.name_candidates({"name": [{"text": "王芳"}]}))
    assert set(created) <= candidates
    settle(index.name_lists)
    assert largest(index.name_lists) <= 2 * SEGMENT
