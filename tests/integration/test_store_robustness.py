"""Transactions, history slots and leases under failure: a write the database refuses, the database going away,
kill -9 of the server with transactions in flight, a writer that stalls, waiters racing for an expired lease.

Every failure here is real (a document the real database refuses, a killed database or server process); the
fault hooks (EHC_FAULT_*) only choose the moment."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import requests
from pymongo import MongoClient

from app.config import Settings
from app.core.timeutil import utcnow
from app.store.embedded import EmbeddedDatabase, free_port
from app.store.leases import Leases
from app.store.owners import Owner
from tests.live import LiveServer

FJ = "application/fhir+json"


def patient(family: str, mrn: str, system: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family}], "identifier": [{"system": system, "value": mrn}]}


def create_entries(system: str, prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"fullUrl": f"urn:uuid:{uuid.uuid4()}",
             "resource": patient(f"{prefix}{i}", f"{prefix}{i}", system),
             "request": {"method": "POST", "url": "Patient"}} for i in range(n)]


def transaction(entries: list[dict[str, Any]]) -> str:
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def stored(db: Any, system: str) -> int:
    return db["Patient"].count_documents({"res.identifier.system": system})


# -- 1. a database error mid-transaction -------------------------------------------------------------------

def test_refused_write_mid_transaction_undoes_what_was_applied(client, services, monkeypatch):
    """The 4th entry's write is refused by the database (a field name it does not accept): the three applied
    before it are undone before the 500 is answered, and the resource it was updating is not left locked."""
    system = "urn:ehc:mrn:refuse"
    existing = client.post("/fhir/Patient", data=json.dumps(patient("Before", "R0", system)), content_type=FJ).json
    pid = existing["id"]
    update = {"resource": {**patient("Before", "R0", system), "id": pid, "gender": "female"},
              "request": {"method": "PUT", "url": f"Patient/{pid}"}}
    monkeypatch.setenv("EHC_FAULT_TXN_REFUSE", "4")  # POSTs are applied first (positions 1-3), then the PUT
    r = client.post("/fhir", data=transaction([update, *create_entries(system, "N", 3)]), content_type=FJ)
    monkeypatch.delenv("EHC_FAULT_TXN_REFUSE")
    assert r.status_code == 500, r.json
    assert r.json["resourceType"] == "OperationOutcome"
    assert "nothing was stored" in r.json["issue"][0]["diagnostics"]
    db = services.handle.db
    assert stored(db, system) == 1  # only the Patient that existed before
    assert client.get(f"/fhir/Patient?identifier={system}|N1").json["total"] == 0
    assert db["_journal"].count_documents({}) == 0
    now = client.get(f"/fhir/Patient/{pid}").json
    assert now["meta"]["versionId"] == "1" and "gender" not in now
    # its history slot was released: the next If-Match 1 update succeeds at once
    r = client.put(f"/fhir/Patient/{pid}", data=json.dumps({**now, "gender": "male"}),
                   content_type=FJ, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.json


@pytest.mark.slow
def test_database_killed_mid_transaction_answers_503_and_undoes_when_back(tmp_path, monkeypatch):
    """The database is killed (SIGKILL) while a transaction is half applied: the client gets 503 with
    Retry-After within seconds, and once the database is back what was applied is undone by the server's
    heartbeat without any request or restart."""
    from app import create_app

    dbserver = EmbeddedDatabase(tmp_path / "db", free_port())
    dbserver.start()
    settings = Settings(mongodb_uri=dbserver.uri + "robust_dbkill", data_dir=tmp_path / "data",
                        auth_required=False)
    app = create_app(settings)
    raw = MongoClient(dbserver.uri, serverSelectionTimeoutMS=20000)["robust_dbkill"]
    system = "urn:ehc:mrn:dbkill"
    result: dict[str, Any] = {}
    monkeypatch.setenv("EHC_FAULT_TXN_PAUSE", "2:3")

    def send() -> None:
        r = app.test_client().post("/fhir", data=transaction(create_entries(system, "D", 4)), content_type=FJ)
        result.update(status=r.status_code, body=r.json, headers=dict(r.headers), at=time.monotonic())

    sender = threading.Thread(target=send)
    try:
        sender.start()
        deadline = time.monotonic() + 20
        while stored(raw, system) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stored(raw, system) == 2, "two entries applied before the pause"
        pid = dbserver.running_pid()
        assert pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        sender.join(30)
        assert result["status"] == 503, result
        assert result["headers"].get("Retry-After")
        assert result["body"]["resourceType"] == "OperationOutcome"
        # the pause ends 3 s after the 2nd entry; the answer follows within seconds (not a 20-40 s hang)
        print(f"503 answered {result['at'] - killed - 3:.1f} s after the pause ended")
        assert result["at"] - killed < 3 + 6, result["at"] - killed
        monkeypatch.delenv("EHC_FAULT_TXN_PAUSE")
        dbserver.pid_file.unlink(missing_ok=True)
        dbserver.start()
        back = time.monotonic()
        while (stored(raw, system) or raw["_journal"].count_documents({})) and time.monotonic() - back < 15:
            time.sleep(0.2)
        assert stored(raw, system) == 0, "the half-applied transaction was undone once the database was back"
        assert raw["_journal"].count_documents({}) == 0
        print(f"undone {time.monotonic() - back:.1f} s after the database came back")
    finally:
        sender.join(5)
        app.extensions["ehc"].handle.close()
        raw.client.close()
        dbserver.stop(timeout=2)


# -- 2. kill -9 with 8 transactions in flight ----------------------------------------------------------------

@pytest.mark.slow
def test_kill_nine_with_eight_transactions_in_flight_leaves_all_or_nothing(db_uri, tmp_path):
    """Finding 11: after kill -9, 5 of 8 in-flight transactions were half applied and still visible 3.5 min
    later. Now, with the default settings, within seconds every one of them is all or nothing."""
    system = "urn:ehc:mrn:kill8"
    sizes = [3, 4, 5, 6, 3, 4, 5, 6]
    env = {"EHC_FAULT_TXN_PAUSE": "2:60", "GUNICORN_CMD_ARGS": "--threads 8"}  # 2 workers x 8 threads: room for all 8
    slow = LiveServer(db_uri, tmp_path / "a", workers=2, env=env)
    (tmp_path / "a").mkdir()
    slow.start()
    db = MongoClient(db_uri).get_default_database()

    def send(i: int) -> None:
        try:
            requests.post(slow.base, data=transaction(create_entries(system, f"T{i}-", sizes[i])),
                          headers={"Content-Type": FJ}, timeout=90)
        except requests.RequestException:
            pass  # the server is killed under it

    pool = ThreadPoolExecutor(8)
    try:
        for i in range(8):
            pool.submit(send, i)
        deadline = time.monotonic() + 60
        while stored(db, system) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stored(db, system) == 16, "8 transactions with 2 entries applied each: all half applied"
        assert db["_journal"].count_documents({}) == 8
    finally:
        slow.kill()
        pool.shutdown(wait=True)
    killed = time.monotonic()

    def per_transaction() -> list[int]:
        return [db["Patient"].count_documents({"res.name.family": {"$regex": f"^T{i}-"}}) for i in range(8)]

    (tmp_path / "b").mkdir()
    restarted = LiveServer(db_uri, tmp_path / "b", workers=1).start()  # default settings
    try:
        while time.monotonic() - killed < 30:
            counts = per_transaction()
            if all(c in (0, sizes[i]) for i, c in enumerate(counts)) and not db["_journal"].count_documents({}):
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - killed
        counts = per_transaction()
        assert all(c in (0, sizes[i]) for i, c in enumerate(counts)), counts
        assert counts == [0] * 8  # none had finished: all undone
        assert db["_journal"].count_documents({}) == 0
        print(f"all-or-nothing {elapsed:.1f} s after kill -9 (server restart included)")
        assert elapsed < 20, elapsed
        found = requests.get(f"{restarted.base}/Patient?identifier={system}|T0-0", timeout=30).json()
        assert found["total"] == 0
        ok = requests.post(restarted.base, data=transaction(create_entries(system, "T0-", 3)),
                           headers={"Content-Type": FJ}, timeout=60)
        assert ok.status_code == 200, ok.text
    finally:
        restarted.stop()


# -- 3a. a writer that stalls ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_stalled_writer_keeps_its_history_slot(app, services, monkeypatch):
    """A writer that stalls for longer than 5 s after claiming version 1 -> 2 keeps its claim: a second writer
    with the same If-Match gets 412 instead of also writing version 2 and having it overwritten (lost update)."""
    system = "urn:ehc:mrn:stall"
    first = app.test_client().post("/fhir/Patient", data=json.dumps(patient("Orig", "S1", system)),
                                   content_type=FJ).json
    pid = first["id"]
    monkeypatch.setenv("EHC_FAULT_SLOT_PAUSE", f"{pid}:7")
    hist = services.handle.db["Patient_history"]
    result: dict[str, int] = {}

    def put(family: str) -> int:
        r = app.test_client().put(f"/fhir/Patient/{pid}", data=json.dumps({**first, "name": [{"family": family}]}),
                                  content_type=FJ, headers={"If-Match": 'W/"1"'})
        return r.status_code

    stalled = threading.Thread(target=lambda: result.update(a=put("Stalled")))
    stalled.start()
    deadline = time.monotonic() + 10
    while hist.find_one({"_id": f"{pid}/1"}) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    claimed = hist.find_one({"_id": f"{pid}/1"})
    assert claimed is not None
    time.sleep(5.5)  # the slot is now older than the old 5 s reuse limit
    result["b"] = put("Second")
    stalled.join(15)
    assert result == {"a": 200, "b": 412}, result
    final = app.test_client().get(f"/fhir/Patient/{pid}").json
    assert final["meta"]["versionId"] == "2" and final["name"][0]["family"] == "Stalled"


@pytest.mark.slow
def test_dead_writers_slot_is_taken_over_once_its_heartbeat_stops(client, db_uri, tmp_path):
    """A server killed between claiming a history slot and writing: the resource is not locked forever; once
    the dead process's heartbeat is stale (5 s), one writer takes the slot over."""
    system = "urn:ehc:mrn:deadslot"
    first = client.post("/fhir/Patient", data=json.dumps(patient("Orig", "K1", system)), content_type=FJ).json
    pid = first["id"]
    live = LiveServer(db_uri, tmp_path, workers=1, env={"EHC_FAULT_SLOT_PAUSE": f"{pid}:60"}).start()
    db = MongoClient(db_uri).get_default_database()
    try:
        with pytest.raises(requests.ReadTimeout):
            requests.put(f"{live.base}/Patient/{pid}", data=json.dumps({**first, "name": [{"family": "Dead"}]}),
                         headers={"Content-Type": FJ, "If-Match": 'W/"1"'}, timeout=3)
        slot = db["Patient_history"].find_one({"_id": f"{pid}/1"})
        assert slot is not None and slot["owner"]
    finally:
        live.kill()
    killed = time.monotonic()

    def put() -> int:
        return client.put(f"/fhir/Patient/{pid}", data=json.dumps({**first, "name": [{"family": "Alive"}]}),
                          content_type=FJ, headers={"If-Match": 'W/"1"'}).status_code

    assert put() == 412  # its heartbeat is still fresh: it might still be writing
    status = 412
    while status == 412 and time.monotonic() - killed < 15:
        time.sleep(0.5)
        status = put()
    assert status == 200
    assert time.monotonic() - killed < 10
    final = client.get(f"/fhir/Patient/{pid}").json
    assert final["meta"]["versionId"] == "2" and final["name"][0]["family"] == "Alive"
    assert db["Patient_history"].find_one({"_id": f"{pid}/1"})["owner"] != slot["owner"]


@pytest.mark.slow
def test_write_that_fails_after_claiming_releases_its_slot(tmp_path, monkeypatch):
    """The database dies while an update holds its history slot: the client gets 503, and once the database is
    back the live server releases the slot by itself, so the resource is not locked until a restart."""
    from app import create_app

    dbserver = EmbeddedDatabase(tmp_path / "db", free_port())
    dbserver.start()
    app = create_app(Settings(mongodb_uri=dbserver.uri + "robust_slot", data_dir=tmp_path / "data",
                              auth_required=False))
    raw = MongoClient(dbserver.uri, serverSelectionTimeoutMS=20000)["robust_slot"]
    try:
        first = app.test_client().post("/fhir/Patient", data=json.dumps(patient("Orig", "F1", "urn:ehc:mrn:fail")),
                                       content_type=FJ).json
        pid = first["id"]
        monkeypatch.setenv("EHC_FAULT_SLOT_PAUSE", f"{pid}:2")
        result: dict[str, int] = {}

        def put(family: str) -> int:
            return app.test_client().put(f"/fhir/Patient/{pid}", content_type=FJ, headers={"If-Match": 'W/"1"'},
                                         data=json.dumps({**first, "name": [{"family": family}]})).status_code

        writer = threading.Thread(target=lambda: result.update(status=put("Lost")))
        writer.start()
        deadline = time.monotonic() + 10
        while raw["Patient_history"].find_one({"_id": f"{pid}/1"}) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert raw["Patient_history"].find_one({"_id": f"{pid}/1"}) is not None, "the slot is claimed"
        pid_db = dbserver.running_pid()
        assert pid_db
        os.kill(pid_db, signal.SIGKILL)  # while the writer stalls between its claim and its write
        writer.join(30)
        assert result["status"] == 503
        dbserver.pid_file.unlink(missing_ok=True)
        dbserver.start()
        back = time.monotonic()
        while raw["Patient_history"].find_one({"_id": f"{pid}/1"}) and time.monotonic() - back < 10:
            time.sleep(0.2)
        assert raw["Patient_history"].find_one({"_id": f"{pid}/1"}) is None, "released by the live server"
        assert put("Next") == 200
        final = app.test_client().get(f"/fhir/Patient/{pid}").json
        assert final["meta"]["versionId"] == "2" and final["name"][0]["family"] == "Next"
    finally:
        app.extensions["ehc"].handle.close()
        raw.client.close()
        dbserver.stop(timeout=2)


def test_only_one_process_takes_over_a_dead_owners_claim(services):
    """Two live processes race to take over what a dead one held: exactly one wins, every time; when the
    winner dies too, the other can take over from it."""
    db = services.handle.db
    a, b = Owner(db), Owner(db)
    a.beat()
    b.beat()
    dead = "gone-host/boot/1/000000000000"  # no heartbeat at all
    for n in range(10):
        barrier = threading.Barrier(2)
        wins: list[str] = []

        def race(owner: Owner, key: str = f"Patient/race-{n}/1", barrier: threading.Barrier = barrier,
                 wins: list[str] = wins) -> None:
            barrier.wait()
            if owner.take_over(key, dead):
                wins.append(owner.id)

        threads = [threading.Thread(target=race, args=(o,)) for o in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(wins) == 1, (n, wins)
    winner, other = (a, b) if db["_takeovers"].find_one({"_id": f"Patient/race-0/1@{dead}"})["by"] == a.id else (b, a)
    assert not other.take_over("Patient/race-0/1", dead)  # the winner is alive
    winner.stop()  # it exits: its heartbeat is gone
    assert other.take_over("Patient/race-0/1", dead)
    other.stop()


def test_an_exit_cut_short_leaves_the_heartbeat_to_go_stale(services, monkeypatch):
    """A second Ctrl-C reaching a gunicorn worker while it removes its heartbeat at exit raises SystemExit in
    the exit hook: the hook ends quietly and the heartbeat stays, to go stale as a killed process's does."""
    from app.store import owners

    owner = Owner(services.handle.db)
    owner.beat()

    class Interrupted:
        def delete_one(self, *_args: Any, **_kwargs: Any) -> None:
            raise SystemExit(0)

    real, owner.col = owner.col, Interrupted()
    monkeypatch.setattr(owners, "_owners", {(0, "exiting"): owner})
    try:
        owners._stop_all()  # does not raise
    finally:
        owner.col = real
    assert services.handle.db[owner.col.name].find_one({"_id": owner.id}) is not None
    owner.stop()


# -- 3b. an expired lease and two waiters ---------------------------------------------------------------------

def test_expired_lease_goes_to_exactly_one_of_two_waiters(services):
    """Both waiters see the same expired lease; the first takes it over; only then the second acts on what it
    saw. Before, the second deleted the first's fresh lease by name and both held it at once."""
    leases = Leases(services.handle.db["_leases"])
    name = "race-expired"
    leases.col.delete_many({"_id": name})
    leases.col.insert_one({"_id": name, "token": "dead-holder", "until": utcnow() - timedelta(seconds=1)})
    both_saw = threading.Barrier(2)
    first_inside = threading.Event()
    order: list[str] = []
    order_lock = threading.Lock()

    def hook(_held: dict[str, Any]) -> None:
        both_saw.wait(10)
        with order_lock:
            first = not order
            order.append("seen")
        if not first:
            first_inside.wait(10)  # act on the stale view only after the first holds the lease

    leases.before_takeover = hook
    inside: list[tuple[str, float, float]] = []

    def waiter(label: str) -> None:
        with leases.hold(name, wait_seconds=20):
            entered = time.monotonic()
            first_inside.set()
            time.sleep(0.5)
            inside.append((label, entered, time.monotonic()))

    threads = [threading.Thread(target=waiter, args=(x,)) for x in ("w1", "w2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(inside) == 2, inside
    (_, s1, e1), (_, s2, e2) = sorted(inside, key=lambda x: x[1])
    assert s2 >= e1, f"both held the lease at once: {inside}"
    assert leases.col.count_documents({"_id": name}) == 0
