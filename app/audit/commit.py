"""Group commit of audit records: the events (and intents) of concurrent requests share one insert.

Every request must have its audit record durable before its response leaves, and one insert per
request made the audit trail the largest share of database commands under load. So requests do not insert:
`submit(doc)` queues the record and blocks; one committer thread per process takes everything queued and
stores it as one pending batch (app.audit.pending); each waiting request is released when the insert of its batch
is acknowledged, or gets `AuditWriteError` when its batch was refused (its request then fails: nothing is
answered without its audit record).

Batching: while one insert runs, the next batch gathers. Before flushing, the committer may linger (at most
`linger` seconds) for requests that are still running and will submit soon, as PostgreSQL's `commit_delay`/
`commit_siblings` do: the web hooks report requests in flight (`enter`/`leave`), and the committer flushes at
once when every request in flight is already waiting in the queue, when the batch is full, or when the linger
is over. Requests running for longer than `slow` seconds (a large transaction, $everything) are not waited
for, so one slow request cannot hold everyone's batches. With no request in flight (the CLI, a script), it
never lingers. In a process whose threads share the GIL, waiting costs latency but hardly throughput: the
others run meanwhile; each insert saved is CPU that the database (on the same machine) gives back.

The floor is one insert per batch: with N concurrent requests, each waiting for its own record, a batch holds
at most N records, so amortised audit writes are at least 1/N command per request. With a spool
(app.audit.spool, on unless EHC_AUDIT_SPOOL=off) a batch is made durable by one fsync'ed append
to a local file instead, and the spool ships many batches with one insert (docs/audit.md).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, InvalidOperation

from app.audit import pending
from app.audit.spool import Spool

log = logging.getLogger("ehc.audit")


class AuditWriteError(RuntimeError):
    """The audit record of a request could not be stored: the request must not be answered as done."""


@dataclass
class _Item:
    doc: dict[str, Any]
    final: bool  # the last record of its request (an intent is not: its request goes on running)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass
class CommitStats:
    batches: int = 0  # batches made durable (insert commands, or appends to the spool)
    records: int = 0  # records made durable
    failed: int = 0  # records refused
    largest: int = 0  # the largest batch so far


class GroupCommitter:
    def __init__(self, collection: Collection, *, spool: Spool | None = None, max_batch: int = 256,
                 linger: float = 0.1, slow: float = 0.5, timeout: float = 30.0) -> None:
        self.col = collection
        self.spool = spool  # None: each batch is inserted into `collection`
        self.max_batch = max_batch
        self.linger = linger
        self.slow = slow
        self.timeout = timeout  # a request never waits longer than this for its batch
        self.stats = CommitStats()
        self.on_batch: Callable[[int, float], None] | None = None  # (records, seconds): for benchmarks
        self._cv = threading.Condition()
        self._queue: list[_Item] = []
        self._inflight: dict[int, float] = {}  # requests running that have not submitted their last record yet
        self._tokens = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._closed = False

    # -- requests in flight (the web hooks report them; used only to decide how long to linger) ------------

    def enter(self) -> int:
        """A request starts; returns its token for leave() or submit(leaving=token)."""
        with self._cv:
            token = next(self._tokens)
            self._inflight[token] = time.monotonic()
            return token

    def leave(self, token: int) -> None:
        with self._cv:
            self._inflight.pop(token, None)
            self._cv.notify_all()

    # -- submitting ----------------------------------------------------------------------------------------

    def submit(self, doc: dict[str, Any], *, final: bool = True, leaving: int | None = None) -> None:
        """Store `doc` durably, together with the records of concurrent requests; returns when it is
        acknowledged by the database. `leaving`: the token of a request (enter()) of which this is the last
        record."""
        item = _Item(doc, final)
        with self._cv:
            if self._closed:
                raise AuditWriteError("the audit committer is closed")
            self._ensure_thread()
            self._queue.append(item)
            if leaving is not None:
                self._inflight.pop(leaving, None)
            self._cv.notify_all()
        if not item.done.wait(self.timeout):
            with self._cv:
                if item in self._queue:  # never reached the database: take it back
                    self._queue.remove(item)
                    raise AuditWriteError(f"the audit record was not stored within {self.timeout:g} s")
            item.done.wait()  # its insert is under way: its outcome decides
        if item.error is not None:
            raise AuditWriteError(f"the audit record was not stored: {item.error}") from item.error

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    # -- the committer thread ------------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        """(Called under the lock.) One thread per process: a forked worker starts its own."""
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="ehc-audit-commit", daemon=True)
            self._thread.start()

    def _take(self) -> list[_Item] | None:
        """(Under the lock.) The next batch, after lingering for requests about to submit; None when closed."""
        while not self._queue:
            if self._closed:
                return None
            self._cv.wait(1.0)
        deadline = time.monotonic() + self.linger
        while len(self._queue) < self.max_batch:
            now = time.monotonic()
            expected = sum(1 for t in self._inflight.values() if now - t < self.slow)
            waiting_requests = sum(1 for i in self._queue if not i.final)  # intents: their requests run on
            if waiting_requests >= expected:
                break  # every request in flight is already waiting here: nobody else is coming soon
            left = deadline - now
            if left <= 0:
                break
            self._cv.wait(left)
        batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
        return batch

    def _run(self) -> None:
        while True:
            with self._cv:
                batch = self._take()
            if batch is None:
                return
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        errors = self._store([i.doc for i in batch])
        self.stats.batches += 1
        self.stats.records += len(batch) - len(errors)
        self.stats.failed += len(errors)
        self.stats.largest = max(self.stats.largest, len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch), time.monotonic() - started)
        for n, item in enumerate(batch):
            item.error = errors.get(n)
            item.done.set()

    def _store(self, docs: list[dict[str, Any]]) -> dict[int, BaseException]:
        """Make a batch durable; returns the errors of the records that were not, by index."""
        if self.spool is not None:
            try:
                self.spool.append(docs)
                return {}
            except Exception as err:  # noqa: BLE001 - a full disk, an unencodable record: the batch fails
                log.warning("audit: a batch of %s record(s) could not be spooled: %s", len(docs), err)
                return {n: err for n in range(len(docs))}
        errors: dict[int, BaseException] = {}
        try:
            self.col.insert_many(pending.batches(docs), ordered=False)
        except BulkWriteError as err:
            write_errors = err.details.get("writeErrors", [])
            for e in write_errors:  # a batch refused: each of its records
                at = int(e["index"]) * pending.MAX_RECORDS
                refused = RuntimeError(str(e.get("errmsg") or e.get("code")))
                errors.update((n, refused) for n in range(at, min(at + pending.MAX_RECORDS, len(docs))))
            if not write_errors:  # a write concern error: durability unknown for all
                errors = {n: err for n in range(len(docs))}
        except InvalidOperation as err:  # the client was closed: the app is gone
            errors = {n: err for n in range(len(docs))}
        except Exception as err:  # noqa: BLE001 - every waiting request gets it
            log.warning("audit: a batch of %s record(s) could not be stored: %s", len(docs), err)
            errors = {n: err for n in range(len(docs))}
        return errors
