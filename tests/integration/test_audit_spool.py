"""The audit spool (app.audit.spool; issue #12's "at most 0.1 audit command per request at 8 clients"): records are
durable on the node's disk before the response, shipped to the database in large batches, never lost when the
process dies, never sealed twice, and waited for by AuditEvent reads. On a real database; the killed writers
are real processes killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pymongo import MongoClient
from pymongo.errors import ServerSelectionTimeoutError

from app.audit import build_trail, pending
from app.audit.chain import CHAIN, EVENTS, PENDING, verify
from app.audit.spool import SUFFIX, segments, spool_dir
from app.audit.writer import event_id_for
from app.cli import main
from app.config import Settings
from app.core.access import AccessRecord, Principal
from app.services import Services
from app.store.embedded import free_port
from tests.audit_commands import amortised, audited_app
from tests.sealing import seal_everything

FJ = "application/fhir+json"


@pytest.fixture(scope="module")
def web(mongo_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Services]]:
    """A web app with the spool on (the default), on a database of its own."""
    assert Settings().audit_spool
    with audited_app(mongo_server, tmp_path_factory.mktemp("spool"), audit_spool=True) as made:
        yield made


@pytest.fixture
def node(mongo_server: str, tmp_path: Path) -> Iterator[Services]:
    """Services of a node (no web app) on a database and data directory of their own."""
    from app.services import build_services

    uri = mongo_server.rstrip("/") + "/t_audit_spool_" + uuid.uuid4().hex[:8]
    svc = build_services(Settings(mongodb_uri=uri, province="11", data_dir=tmp_path, auth_required=False))
    yield svc
    svc.handle.client.drop_database(svc.handle.db.name)
    svc.handle.close()


def _segments(svc: Services) -> list[Path]:
    return segments(spool_dir(svc.settings.data_dir, svc.handle.db.name))


def _read(i: int) -> AccessRecord:
    return AccessRecord("read", "Patient", [f"p{i}"], principal=Principal(client_id="c"))


def test_eight_clients_cost_under_a_tenth_of_an_audit_command_per_request(web: tuple[Any, Services]) -> None:
    app, svc = web
    body = {"resourceType": "Patient", "name": [{"family": "李", "given": ["雷"]}], "gender": "male"}
    pid = app.test_client().post("/fhir/Patient", data=json.dumps(body), content_type=FJ).json["id"]
    trail = svc.extensions["audit"]
    seal_everything(trail.sealer)
    events_before = svc.handle.db[EVENTS].count_documents({})
    spool = trail.writer.committer.spool
    appends, ships = spool.stats.appends, spool.stats.ships
    # counted: the request threads and the shipper; the last records shipped (and counted) before the count ends
    per_request = amortised(app, 8, 25, pid, after=trail.writer.settle)
    assert per_request <= 0.1, per_request
    assert spool.stats.ships - ships >= 1
    assert spool.stats.appends - appends > spool.stats.ships - ships  # many batches per shipment
    # every request's event was sealed, none twice
    seal_everything(trail.sealer)
    assert svc.handle.db[EVENTS].count_documents({}) - events_before == 8 * 25
    report = verify(svc.handle.db)
    assert report.ok and report.pending == 0
    assert _segments(svc) == []


def test_an_auditevent_read_sees_the_request_just_before_it(web: tuple[Any, Services]) -> None:
    app, _svc = web
    client = app.test_client()
    missing = uuid.uuid4().hex
    assert client.get(f"/fhir/Patient/{missing}").status_code == 404
    found = client.get("/fhir/AuditEvent", query_string={"_count": "500", "_sort": "-date"}).json
    assert any(missing in json.dumps(e["resource"]) for e in found["entry"])


KILLED_WRITER = """
import sys, time
from pathlib import Path
from app.config import Settings
from app.services import build_services
from app.audit import build_trail
from app.core.access import AccessRecord, Principal
svc = build_services(Settings(mongodb_uri=sys.argv[1], province="11", data_dir=Path(sys.argv[2]),
                              auth_required=False))
writer, _ = build_trail(svc)
writer.committer.spool.interval = float(sys.argv[3])  # how often its shipper runs
read = writer.write(AccessRecord("read", "Patient", ["p-read"], principal=Principal(client_id="his-7")))
intent = writer.reserve("PUT", "Patient/p-killed", None, "10.2.3.4", Principal(client_id="his-7"))
print(read, intent, flush=True)
time.sleep(120)  # "the operation": killed here, before the write's event
"""


def _writer(svc: Services, ship_every: float) -> tuple[subprocess.Popen[str], list[str]]:
    uri = svc.settings.mongodb_uri
    assert uri is not None
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, uri, str(svc.settings.data_dir), str(ship_every)],
                            stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    assert proc.stdout is not None
    ids = proc.stdout.readline().split()
    assert len(ids) == 2, ids
    return proc, ids


def test_records_of_a_killed_process_are_recovered_from_its_spool(node: Services) -> None:
    proc, (read_id, intent_id) = _writer(node, ship_every=3600)  # it never ships
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    col = node.handle.db[PENDING]
    assert pending.find(col, read_id) is None and pending.find(col, intent_id) is None
    assert len(_segments(node)) == 1  # both acknowledged: on disk, nowhere else
    status = CliRunner().invoke(main, ["status"], env={"EHC_MONGODB_URI": node.settings.mongodb_uri or "",
                                                       "EHC_DATA_DIR": str(node.settings.data_dir)})
    assert json.loads(status.stdout)["audit"]["spooled_segments"] == 1, status.output
    _writer_, sealer = build_trail(node, intent_grace=0.0)
    result = seal_everything(sealer)
    assert result is not None and result.recovered == 1 and result.sealed == 2
    events = node.handle.db[EVENTS]
    assert events.find_one({"_id": read_id})["res"]["agent"][0]["who"]["identifier"]["value"] == "his-7"
    lost = events.find_one({"_id": intent_id})["res"]  # the write's outcome is unknown: outcome 8
    assert (lost["action"], lost["outcome"], lost["subtype"][0]["code"]) == ("U", "8", "update")
    assert _segments(node) == []
    assert verify(node.handle.db).ok


def test_a_segment_found_again_after_sealing_is_not_sealed_twice(node: Services) -> None:
    """A process that shipped a segment and died before removing it: its records are in the chain already."""
    writer, sealer = build_trail(node, intent_grace=0.0)
    writer.committer.spool.interval = 0  # no shipper thread: this test ships
    ids = [writer.write(_read(i)) for i in range(3)]
    intent = writer.reserve("PUT", "Patient/p1", None, "10.1.1.1", Principal(client_id="his"))
    writer.write(AccessRecord("update", "Patient", ["p1"], principal=Principal(client_id="his")), intent_id=intent)
    [segment] = _segments(node)
    copy = segment.read_bytes()
    writer.committer.spool.ship()
    segment.write_bytes(copy)  # its owner died before removing it: an orphan, while its records wait in pending
    seal_everything(sealer)
    segment.write_bytes(copy)  # and again once they are sealed
    seal_everything(sealer)
    assert node.handle.db[CHAIN].count_documents({}) == 4  # 3 reads and the update: each once
    assert writer.committer.spool.stats.skipped == 10 and writer.committer.spool.stats.recovered == 0
    assert _segments(node) == []
    events = node.handle.db[EVENTS]
    assert {d["_id"] for d in events.find({})} == {*ids, event_id_for(intent)}
    assert verify(node.handle.db).ok


def test_a_record_cut_short_is_dropped_and_the_rest_recovered(node: Services) -> None:
    writer, sealer = build_trail(node)
    spool = writer.committer.spool
    spool.interval = 0
    ids = [writer.write(_read(i)) for i in range(3)]
    [segment] = _segments(node)
    data = segment.read_bytes()
    orphan = segment.with_name(f"999998-dead{SUFFIX}")
    orphan.write_bytes(data[:-7])  # the third record's write was cut short: its fsync never returned
    spool._current = None  # this process forgets its own segment, as if it were the one that died
    segment.unlink()
    seal_everything(sealer)
    assert spool.stats.recovered == 2
    assert {d["_id"] for d in node.handle.db[EVENTS].find({})} == set(ids[:2])
    assert _segments(node) == []


def test_failed_shipments_are_kept_on_disk_and_recovered(node: Services) -> None:
    """The database away for several shipments: each segment stays on disk, without a descriptor held open
    (a long outage must not use up the process's files), and all are recovered once it is back."""
    writer, sealer = build_trail(node)
    spool = writer.committer.spool
    spool.interval = 0
    real = spool.col
    nowhere: MongoClient[Any] = MongoClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=300)
    spool.col = nowhere["x"][PENDING]  # the database is out of reach while the spool ships
    fds = len(os.listdir("/proc/self/fd"))
    rids = []
    try:
        for i in range(3):
            rids.append(writer.write(_read(i)))  # answered: durable on disk
            with pytest.raises(ServerSelectionTimeoutError):
                spool.ship()
        assert len(_segments(node)) == 3
        assert len(os.listdir("/proc/self/fd")) <= fds  # none of them held open
    finally:
        spool.col = real
        nowhere.close()
    seal_everything(sealer)  # the database is back: the segments are recovered under the sealer's lease
    assert {d["_id"] for d in node.handle.db[EVENTS].find({})} == set(rids)
    assert spool.stats.recovered == 3 and _segments(node) == []


def test_a_shipment_cut_short_at_exit_is_kept_for_recovery(node: Services) -> None:
    """A second Ctrl-C reaching a gunicorn worker while it ships at exit raises SystemExit inside close():
    the segment stays on disk (no traceback from the exit hook) and the next sealing pass recovers it."""
    writer, sealer = build_trail(node)
    spool = writer.committer.spool
    spool.interval = 0
    rid = writer.write(_read(0))

    class Interrupted:
        def insert_many(self, *_args: Any, **_kwargs: Any) -> None:
            raise SystemExit(0)

    real, spool.col = spool.col, Interrupted()
    try:
        spool.close()  # does not raise
    finally:
        spool.col = real
    assert len(_segments(node)) == 1
    _writer_, other = build_trail(node)  # the next start of the server
    seal_everything(other)
    assert node.handle.db[EVENTS].find_one({"_id": rid}) is not None and _segments(node) == []


def test_recovery_leaves_a_segment_being_created_alone(node: Services) -> None:
    """A new segment file is locked just after it is created: in that instant it must not look orphaned
    (found under load: another worker's recovery removed it and the creator's batch failed)."""
    _writer_, sealer = build_trail(node)
    directory = spool_dir(node.settings.data_dir, node.handle.db.name)
    directory.mkdir(parents=True, exist_ok=True)
    being_made = directory / ".4242-0123456789ab.new"
    being_made.touch()
    seal_everything(sealer)
    assert being_made.exists()
    old = time.time() - 120  # its creator died two minutes ago, before locking it
    os.utime(being_made, (old, old))
    seal_everything(sealer)
    assert not being_made.exists()


BUSY_WRITER = """
import sys
from pathlib import Path
from app.config import Settings
from app.services import build_services
from app.audit import build_trail
from app.core.access import AccessRecord, Principal
svc = build_services(Settings(mongodb_uri=sys.argv[1], province="11", data_dir=Path(sys.argv[2]),
                              auth_required=False))
writer, _ = build_trail(svc)
writer.committer.spool.interval = 0.005  # a new segment every few records
for i in range(int(sys.argv[3])):
    writer.write(AccessRecord("read", "Patient", [f"p{i}"], principal=Principal(client_id="busy")))
svc.handle.close()  # ships the rest
print("ok", flush=True)
"""


def test_busy_writers_and_a_recovering_sealer_lose_nothing_and_seal_nothing_twice(node: Services) -> None:
    """Two processes write and rotate segments as fast as they can while this one seals (and so scans for
    orphans) back to back: no write fails, every record is sealed exactly once."""
    uri = node.settings.mongodb_uri
    assert uri is not None
    per_writer = 300
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_WRITER, uri, str(node.settings.data_dir), str(per_writer)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
             for _ in range(2)]
    _writer_, sealer = build_trail(node)
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        sealer.seal(wait_seconds=1.0)
    outputs = [p.communicate(timeout=30) for p in procs]
    assert [out.strip() for out, _err in outputs] == ["ok", "ok"], [err[-2000:] for _out, err in outputs]
    seal_everything(sealer)
    assert node.handle.db[CHAIN].count_documents({}) == 2 * per_writer
    assert len({d["ev"] for d in node.handle.db[CHAIN].find({}, {"ev": 1})}) == 2 * per_writer
    assert verify(node.handle.db).ok and _segments(node) == []


def test_settle_waits_for_what_another_live_process_spooled(node: Services) -> None:
    proc, (read_id, _intent) = _writer(node, ship_every=3)
    try:
        col = node.handle.db[PENDING]
        assert pending.find(col, read_id) is None  # still in the other process's spool
        writer, _sealer = build_trail(node)
        writer.committer.spool.settle(timeout=20)
        assert pending.find(col, read_id) is not None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_the_spool_can_be_switched_off() -> None:
    from app.config import load_settings

    assert load_settings({}).audit_spool
    assert not load_settings({"EHC_AUDIT_SPOOL": "off"}).audit_spool
