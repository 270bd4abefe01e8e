"""Pending audit records, stored in batches: one document per shipment of records, not one per record.

Records (events and intents: app.audit.writer) wait in `_audit_pending` until the sealer chains them. Stored one
document each, a record cost the database three operations beside the AuditEvent it becomes: the insert, the
sealer's read and its delete, and FerretDB v1 on SQLite decodes every document a delete matches (deleting 50
records one by one cost six times the delete of their batch: scripts/bench_db_cost.py). So records travel in
batches `{_id, recs: [record, ...]}`:
- a spool segment (app.audit.spool) is shipped as one batch (or a few, `MAX_RECORDS` records each), and a
  group-commit batch (app.audit.commit, spool off) is inserted as one;
- the sealer reads the oldest batches with a bare limit (`oldest`), and `release` removes what it sealed with
  one statement per batch: a delete, or a rewrite of the records still waiting (a write's intent whose event
  has not come yet, or what a pass left for the next).
A document without `recs` is a record stored alone (by an earlier version of this server): a batch of one,
whose id is the record's.

Batch ids sort by time, as record ids do (`pending_id`, a UUIDv7), so that on MongoDB a sort on `_id` (served by
its index) finds the oldest; FerretDB v1 on SQLite returns rows in insertion order for a bare limit. Records
inside a batch keep their own ids: the sealer names them in the chain (`done`), and a batch is atomic, so a
record is pending exactly when its batch is.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import DeleteOne, UpdateOne
from pymongo.collection import Collection

MAX_RECORDS = 256  # records per batch document: what a pass may have to rewrite stays small
BATCH_READ = 32  # batches a pass reads at most

_lock = threading.Lock()
_last = [0, 0, 0]  # pid, ms, counter


def pending_id() -> str:
    """A UUIDv7 (RFC 9562; 12-bit counter in rand_a): ids of one process sort in creation order, and across
    processes by millisecond."""
    with _lock:
        ms = time.time_ns() // 1_000_000
        pid = os.getpid()
        if _last[0] == pid and ms <= _last[1]:
            ms, counter = _last[1], _last[2] + 1
            if counter > 0xFFF:
                ms, counter = ms + 1, 0
        else:
            counter = 0
        _last[:] = [pid, ms, counter]
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | secrets.randbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def batches(records: Sequence[Mapping[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    """The batch documents that carry `records`, in order. `name`: ids `<name>.<part>`, the same for the same
    records every time (a spool segment's: its recovery finds out whether it was shipped); otherwise new ids."""
    return [{"_id": f"{name}.{n}" if name else pending_id(), "recs": list(records[at:at + MAX_RECORDS])}
            for n, at in enumerate(range(0, len(records), MAX_RECORDS))]


def records_of(batch: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The records a pending document holds (a document without `recs` is one record)."""
    recs = batch.get("recs")
    return list(recs) if isinstance(recs, list) else [batch]


@dataclass
class Window:
    """The oldest batches and their records, oldest record first."""

    batches: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # by batch id, in reading order
    records: list[Mapping[str, Any]] = field(default_factory=list)
    batch_of: dict[str, str] = field(default_factory=dict)  # record id -> the id of a batch holding it
    complete: bool = True  # every pending batch was read: a record not in the window is not pending


def oldest(col: Collection, *, sorted_ids: bool, events: int, per_batch: float = 64.0,
           limit: int = BATCH_READ) -> Window:
    """The oldest batches, read until they hold `events` events, at most `limit` of them: a cost proportional to
    what a pass seals, never to the backlog. Batches come from the database a few at a time, as many as `events`
    records need at `per_batch` records a batch (the size of those read last), so that neither hundreds of
    records are read in vain nor a round trip made for each small batch. `sorted_ids`: the database serves a
    sort on `_id` from its index (MongoDB); otherwise a bare limit returns the oldest (FerretDB v1: insertion
    order)."""
    cursor = col.find({}).sort("_id", 1).limit(limit) if sorted_ids else col.find({}).limit(limit)
    window = Window(complete=False)
    found = 0
    with cursor.batch_size(max(1, min(limit, round(events / max(per_batch, 1.0))))):
        for batch in cursor:
            bid = str(batch["_id"])
            window.batches[bid] = batch
            for record in records_of(batch):
                window.records.append(record)
                window.batch_of.setdefault(str(record["_id"]), bid)
                found += record.get("kind") == "event"
            if found >= events:
                break
        else:
            window.complete = len(window.batches) < limit
    window.records.sort(key=lambda r: str(r["_id"]))
    return window


def per_batch(window: Window, before: float) -> float:
    """Records a batch, of the batches of `window` (`before` when it read none)."""
    return len(window.records) / len(window.batches) if window.batches else before


def release(col: Collection, batches: Iterable[Mapping[str, Any]], done: set[str]) -> None:
    """Remove the `done` records from these batches with one command: a batch left empty is deleted, another
    rewritten with the records it still holds. Idempotent: a pass that dies half way leaves it to the next."""
    ops: list[DeleteOne | UpdateOne] = []
    for batch in batches:
        recs = records_of(batch)
        left = [r for r in recs if str(r["_id"]) not in done]
        if not left or "recs" not in batch:
            if len(left) < len(recs):
                ops.append(DeleteOne({"_id": batch["_id"]}))
        elif len(left) < len(recs):
            ops.append(UpdateOne({"_id": batch["_id"]}, {"$set": {"recs": left}}))
    if ops:
        col.bulk_write(ops, ordered=False)


def record_ids(col: Collection) -> Iterator[str]:
    """The id of every pending record (a scan: for verification and figures, never for sealing)."""
    for batch in col.find({}, {"recs._id": 1}):
        for rec in records_of(batch):
            yield str(rec["_id"])


def count(col: Collection) -> int:
    """How many records are pending (a scan of the batches' record ids)."""
    return sum(1 for _ in record_ids(col))


def find(col: Collection, record_id: str) -> Mapping[str, Any] | None:
    """The pending record with this id, or None (a scan, as `record_ids`)."""
    for batch in col.find({}):
        for rec in records_of(batch):
            if str(rec["_id"]) == record_id:
                return rec
    return None
