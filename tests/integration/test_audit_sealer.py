"""The sealer under a backlog (issue #12): each pass takes at most `batch` of the oldest records and reads
`_audit_pending` only with a bare limit or `{_id}` lookups (what FerretDB v1 serves without a full scan), the
background loop keeps sealing while a backlog exists, and a pass seals its window oldest first."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from pymongo import monitoring

from app.audit import build_trail
from app.audit.chain import CHAIN, PENDING, key, verify
from app.audit.plugin import SealLoop
from app.audit.writer import event_id_for
from app.core.access import AccessRecord, Principal
from tests.sealing import seal_everything


class PendingCommands(monitoring.CommandListener):
    """Every command on `_audit_pending` of the sealer's thread, as (name, filter, sort, limit, statements)."""

    def __init__(self) -> None:
        self.thread: int | None = None
        self.seen: list[tuple[str, Any, Any, Any, list[Any]]] = []
        self.read = 0  # pending documents the reads returned
        self._reads: set[int] = set()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if threading.get_ident() != self.thread or event.command.get(event.command_name) != PENDING \
                and event.command.get("collection") != PENDING:
            return
        cmd = event.command
        statements = [d.get("q") for d in cmd.get("deletes", [])] + [u.get("q") for u in cmd.get("updates", [])]
        self.seen.append((event.command_name, cmd.get("filter"), cmd.get("sort"), cmd.get("limit"), statements))
        if event.command_name in ("find", "getMore"):
            self._reads.add(event.request_id)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.request_id in self._reads:
            self._reads.discard(event.request_id)
            cursor = event.reply.get("cursor", {})
            self.read += len(cursor.get("firstBatch", cursor.get("nextBatch", [])))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


LISTENER = PendingCommands()
monitoring.register(LISTENER)


@pytest.fixture()
def fresh(mongo_server, settings):
    from app.services import build_services

    uri = mongo_server.rstrip("/") + "/t_audit_seal_" + uuid.uuid4().hex[:8]
    svc = build_services(settings.with_overrides(mongodb_uri=uri))
    yield svc
    svc.handle.client.drop_database(svc.handle.db.name)
    svc.handle.close()


def backlog(writer: Any, n: int, threads: int = 8) -> list[str]:
    """n events written by concurrent writers (group commit makes this quick)."""
    ids: list[str] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(n // threads):
            eid = writer.write(AccessRecord("read", "Patient", [f"p{t}-{i}"], principal=Principal(client_id="c")))
            with lock:
                ids.append(eid)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return ids


def test_a_pass_takes_a_bounded_window_without_scanning(fresh):
    writer, sealer = build_trail(fresh, batch=50, budget=60.0)
    written = backlog(writer, 160)
    LISTENER.thread, LISTENER.seen = threading.get_ident(), []
    try:
        first = sealer.seal()
    finally:
        LISTENER.thread = None
    assert first is not None and first.sealed == 50 and first.more
    finds = [c for c in LISTENER.seen if c[0] == "find"]
    assert finds and all(c[3] == sealer.batches for c in finds if c[1] in ({}, None))  # the oldest batches
    for name, flt, sort, _limit, statements in LISTENER.seen:
        # only a bare (limited) find or {_id: value} lookups: never a filter or sort FerretDB would scan for
        assert flt in ({}, None) or set(flt) == {"_id"} and isinstance(flt["_id"], str), (name, flt)
        if fresh.handle.is_ferretdb:
            assert sort is None, (name, sort)
        for q in statements:
            assert set(q) == {"_id"} and isinstance(q["_id"], str), (name, q)  # never $in
    rest = seal_everything(sealer)
    assert rest is not None and rest.sealed == 110 and not rest.more
    chained = [fresh.handle.db[CHAIN].find_one({"_id": key(n)})["ev"] for n in range(1, 161)]
    assert sorted(chained) == sorted(written)
    assert chained[:50] == sorted(chained[:50])  # a pass seals its window oldest first (time-ordered ids)
    assert fresh.handle.db[PENDING].count_documents({}) == 0
    assert verify(fresh.handle.db).ok


def test_a_pass_reads_the_batches_its_window_needs_not_the_backlog(fresh):
    writer, sealer = build_trail(fresh, batch=50, budget=60.0)
    spool = writer.committer.spool
    assert spool is not None
    for b in range(10):  # 10 batches of 40 events: a backlog of 400
        for i in range(40):
            writer.write(AccessRecord("read", "Patient", [f"p{b}-{i}"]))
        spool.ship()
    LISTENER.thread, LISTENER.seen, LISTENER.read = threading.get_ident(), [], 0
    try:
        first = sealer.seal()
    finally:
        LISTENER.thread = None
    assert first is not None and first.sealed == 50 and first.more
    assert LISTENER.read == 2  # the two batches that hold its 50 events, not the 10 pending
    assert seal_everything(sealer).sealed == 350
    assert verify(fresh.handle.db).ok


def test_the_loop_keeps_sealing_while_a_backlog_exists(fresh):
    writer, sealer = build_trail(fresh, batch=40)
    backlog(writer, 200)
    passes: list[Any] = []
    loop = SealLoop(sealer, interval=60.0)  # without back-to-back passes, 5 passes would take 4 minutes
    loop.on_pass = passes.append
    loop.ensure_running()
    loop._wake.set()  # the first pass now, as if its interval were over
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and sum(p.sealed for p in passes) < 200:
            time.sleep(0.1)
    finally:
        loop.stop()
    assert sum(p.sealed for p in passes) == 200
    assert max(p.sealed for p in passes) <= 40
    report = verify(fresh.handle.db)
    assert report.ok and report.sealed == 200 and report.pending == 0


@pytest.mark.parametrize("beyond", ["the batches read", "the records taken"])
def test_an_old_intent_whose_event_is_beyond_the_window_is_not_recovered(fresh, beyond):
    read = 3 if beyond == "the batches read" else 32
    writer, sealer = build_trail(fresh, batch=5, batches=read, intent_grace=0.0, budget=60.0)
    spool = writer.committer.spool
    assert spool is not None
    iid = writer.reserve("PUT", "Patient/p1", None, None)
    spool.ship()  # each record shipped alone: a batch each, 10 in all
    for i in range(8):
        writer.write(AccessRecord("read", "Patient", [f"p{i}"]))
        spool.ship()
    eid = writer.write(AccessRecord("update", "Patient", ["p1"]), intent_id=iid)
    first = sealer.seal()
    # the window holds the intent but not its event (past the batches a pass reads at most, or past those that
    # held the 5 events it takes): the intent is not recovered, it waits, as its event may still come
    assert first is not None and first.recovered == 0
    assert (first.sealed, first.waiting) == ((2, 1) if read == 3 else (5, 1))
    seal_everything(sealer)
    report = verify(fresh.handle.db)
    assert report.ok and report.sealed == 9 and report.pending == 0
    assert fresh.handle.db[CHAIN].count_documents({"ev": iid}) == 0  # sealed once, as its real event
    assert fresh.handle.db[CHAIN].count_documents({"ev": eid}) == 1


def test_writes_in_flight_never_fill_the_window(fresh):
    """More writes running than the window holds: their intents (the oldest records) are passed over, and the
    events behind them are sealed, not held until the writes end."""
    writer, sealer = build_trail(fresh, batch=5, budget=60.0)
    intents = [writer.reserve("PUT", f"Patient/p{i}", None, None) for i in range(6)]
    reads = [writer.write(AccessRecord("read", "Patient", [f"r{i}"])) for i in range(3)]
    first = sealer.seal()
    assert first is not None and (first.sealed, first.waiting, first.recovered) == (3, 6, 0)
    for i, iid in enumerate(intents):
        writer.write(AccessRecord("update", "Patient", [f"p{i}"]), intent_id=iid)
    seal_everything(sealer)
    chained = {d["ev"] for d in fresh.handle.db[CHAIN].find({})}
    assert chained == {*reads, *(event_id_for(i) for i in intents)}
    report = verify(fresh.handle.db)
    assert report.ok and report.pending == 0


def test_an_unreadable_record_is_sealed_as_such_and_does_not_stop_the_chain(fresh):
    writer, sealer = build_trail(fresh)
    first = writer.write(AccessRecord("read", "Patient", ["a"]))
    broken = writer.pending_event(AccessRecord("read", "Patient", ["b"]), "01000000-0000-7000-8000-000000000000")
    broken["rec"]["resource_ids"] = 17  # what this version cannot rebuild (another version's, or damaged)
    writer.committer.submit(broken)
    last = writer.write(AccessRecord("read", "Patient", ["c"]))
    result = seal_everything(sealer)
    assert result is not None and result.sealed == 3
    ev = fresh.handle.db["AuditEvent"].find_one({"_id": broken["_id"]})["res"]
    assert ev["outcome"] == "8" and "could not be rebuilt" in ev["outcomeDesc"]
    assert {first, last} <= {e["ev"] for e in fresh.handle.db[CHAIN].find({})}
    assert verify(fresh.handle.db).ok and fresh.handle.db[PENDING].count_documents({}) == 0
