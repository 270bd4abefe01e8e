"""One-time use of dynamic QR tokens: collection `ehc_nonces`, `_id` = "<kid>:<nonce hex>", {exp}.

A token is accepted the first time its nonce is inserted; a duplicate key means it was shown before
(`replayed`). The insert is acknowledged by the database before `use` returns True, so "valid" is never
answered for a nonce that a crash could forget.

Concurrent verifications share inserts (group commit without a thread of its own): the first request to
arrive while no insert is running writes everything queued with one `insert_many(ordered=False)`; requests
arriving meanwhile queue up and the first of them writes the next batch once that insert is acknowledged.
Each request learns the outcome of its own document: inserted, duplicate (replayed, also when the same
token is shown twice in one batch: one of them wins) or an error, which fails only that request.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from app.core.timeutil import utcnow
from app.ehc.token import CLOCK_SKEW

DUPLICATE_KEY = 11000


@dataclass
class _Pending:
    doc: dict[str, Any]
    done: bool = False
    first: bool = False
    error: BaseException | None = None


class SharedInserts:
    """insert_many of the documents of concurrent callers; `insert` returns False for a duplicate _id."""

    def __init__(self, col: Collection, max_batch: int = 500) -> None:
        self.col = col
        self.max_batch = max_batch
        self.batches = 0  # insert commands issued (for tests and benchmarks)
        self._cv = threading.Condition()
        self._queue: list[_Pending] = []
        self._writing = False

    def insert(self, doc: dict[str, Any]) -> bool:
        mine = _Pending(doc)
        with self._cv:
            self._queue.append(mine)
        while True:
            with self._cv:
                while self._writing and not mine.done:
                    self._cv.wait()
                if mine.done:
                    break
                # Nobody is writing and ours is still queued: write the queue (from its head, ours included
                # unless more than a batch waits before it).
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                self._writing = True
            try:
                self._write(batch)
            except BaseException as exc:  # e.g. the worker is being stopped: no one waits for ever
                with self._cv:
                    for p in batch:
                        if not p.done:
                            p.error, p.done = RuntimeError(f"nonce insert interrupted: {exc!r}"), True
                raise
            finally:
                with self._cv:
                    self._writing = False
                    self._cv.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.first

    def _write(self, batch: list[_Pending]) -> None:
        failed: dict[int, BaseException | None] = {}
        try:
            self.batches += 1
            self.col.insert_many([p.doc for p in batch], ordered=False)
        except BulkWriteError as err:
            for e in err.details.get("writeErrors") or []:
                failed[int(e["index"])] = None if e.get("code") == DUPLICATE_KEY else \
                    RuntimeError(f"nonce insert refused: {e.get('errmsg')}")
            if not err.details.get("writeErrors"):
                failed = dict.fromkeys(range(len(batch)), err)
        except Exception as exc:  # noqa: BLE001 - every caller of the batch learns it
            failed = dict.fromkeys(range(len(batch)), exc)
        with self._cv:
            for i, p in enumerate(batch):
                p.first = i not in failed
                p.error = failed.get(i)
                p.done = True


class NonceStore:
    """One-time use of dynamic tokens: an insert on a unique _id; a duplicate key means replayed."""

    def __init__(self, db: Database, purge_every: float = 600.0) -> None:
        self.col: Collection = db["ehc_nonces"]
        self.inserts = SharedInserts(self.col)
        self.purge_every = timedelta(seconds=purge_every)
        self._next_purge = utcnow() + self.purge_every

    def use(self, kid: str, nonce: bytes, exp: int) -> bool:
        """True the first time this token nonce is seen (and durably recorded), False for a replay."""
        now = utcnow()
        first = self.inserts.insert({"_id": f"{kid}:{nonce.hex()}",
                                     "exp": datetime.fromtimestamp(exp, UTC).replace(tzinfo=None)})
        if first and now >= self._next_purge:
            self._next_purge = now + self.purge_every + timedelta(seconds=secrets.randbelow(60))
            self.purge(now)
        return first

    def purge(self, now: datetime | None = None) -> int:
        """Forget nonces of tokens that expired more than CLOCK_SKEW ago: a replay of those answers 'expired' anyway,
        also at a process whose clock is behind this one's by up to the allowance (forgotten at exp, a nonce could be
        accepted again there until that process's clock reaches exp)."""
        cutoff = (now or utcnow()) - timedelta(seconds=CLOCK_SKEW)
        return self.col.delete_many({"exp": {"$lt": cutoff}}).deleted_count
