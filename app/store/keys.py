"""Posting lists served by _id lookups: which resources reference a target, which carry an identifier.

FerretDB v1 on SQLite answers only `{_id: ...}` filters from an index; every other filter scans the
collection. These lists make the selective searches (by patient, subject, identifier ...) and the
"who references this Patient" checks index lookups on both FerretDB and MongoDB. A list may hold ids
that no longer match (entries are added before a write and removed after it), never miss one: every
candidate is re-checked against the stored document.

A list is a head document `{_id: key, ids: [...], s: n}` plus `s` sealed segments `{_id: "#i#key", ids}`.
Writes touch the head only, so their cost stays bounded however long the list grows (FerretDB v1 rewrites a
whole document on every `$addToSet`: one unbounded list, such as a much-read patient's AuditEvents or a
common name, made every write slower than the last). A head that has taken `SEGMENT` ids is rolled, off the
request path, by the process that wrote to it (`Roller`): its ids are added to segment `s`, then pulled from
the head while `s` is incremented. Both steps are idempotent unions and removals of exactly the moved ids,
so racing rollers, racing writers and a roller that dies half way lose nothing: at worst an id is listed
twice, or a segment number is skipped. Removals pull from the head only; an id left in a sealed segment is
one more candidate that the re-check drops.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.store.database import insert_new

log = logging.getLogger("ehc.store")

# Keys written in one update command. A write touches one to three keys; FerretDB v1 stalls on bulks of
# ~100 updates of existing documents, so larger sets go in chunks of this size.
BULK_KEYS = 16
# Ids a head takes before it is rolled into a segment: a write rewrites at most this many (~40 bytes each).
SEGMENT = 128
# Additions to one key in this process between two looks at its head's size (a look is one read, made by the
# roller thread, never by a request).
CHECK_EVERY = 32
_MAX_COUNTED = 100_000  # keys counted in memory before the counts start again


def reference_key(resource_type: str, target: str) -> str:
    return f"{resource_type}|r|{target}"


def identifier_key(resource_type: str, token: str) -> str:
    return f"{resource_type}|i|{token}"


def segment_id(key: str, number: int) -> str:
    """A sealed segment's _id. No key starts with '#' (they start with a resource type or a name key)."""
    return f"#{number}#{key}"


def key_of(doc_id: str) -> str:
    """The list a head or a segment document belongs to."""
    if doc_id.startswith("#"):
        return doc_id.split("#", 2)[2]
    return doc_id


def keys_for(resource_type: str, ix: dict[str, Any], reference_codes: Iterable[str]) -> set[str]:
    """The posting-list keys of one stored document's index values."""
    keys: set[str] = set()
    for code in reference_codes:
        for value in ix.get(code, ()):
            if isinstance(value, str) and "/" in value and "://" not in value:
                keys.add(reference_key(resource_type, value))
    for token in ix.get("identifier", ()):
        if isinstance(token, str) and "|" in token and not token.startswith("|") and not token.endswith("|"):
            keys.add(identifier_key(resource_type, token))
    return keys


class KeyIndex:
    """The posting lists of one collection (`_keys` for the store, `mpi_names` for the master index)."""

    def __init__(self, collection: Collection) -> None:
        self.col = collection
        self.roller = Roller(self)
        self._counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()

    # One update command per write (a command may carry several statements), not one per key: a write usually
    # touches one to three keys. Racing upserts of one new key (a duplicate key, or FerretDB's malformed reply)
    # are redone one key at a time: $addToSet and $pull are idempotent.
    def add(self, resource_id: str, keys: Iterable[str]) -> None:
        self.change(resource_id, keys, ())

    def remove(self, resource_id: str, keys: Iterable[str]) -> None:
        self.change(resource_id, (), keys)

    def change(self, resource_id: str, added: Iterable[str], removed: Iterable[str]) -> None:
        """Add resource_id to some lists and take it from others, in one command when they are few."""
        adds = sorted(added)
        self._apply([(k, {"$addToSet": {"ids": resource_id}}, True) for k in adds]
                    + [(k, {"$pull": {"ids": resource_id}}, False) for k in sorted(removed)])
        self._count([(k, [resource_id]) for k in adds])

    def add_many(self, postings: Mapping[str, list[str]]) -> None:
        """Add ids to several lists (key -> ids), a few keys per command."""
        items = sorted((k, v) for k, v in postings.items() if v)
        self._apply([(k, {"$addToSet": {"ids": {"$each": ids}}}, True) for k, ids in items])
        self._count(items)

    def add_new_many(self, postings: Mapping[str, list[str]]) -> None:
        """add_many when most of the lists are new (a batch of new resources): one insert_many of their heads
        `{_id: key, ids}` (the form an upsert gives a new head); keys that have a head already get their ids
        through add_many."""
        lists = [(k, list(dict.fromkeys(v))) for k, v in sorted(postings.items()) if v]
        if not lists:
            return
        taken = insert_new(self.col, [{"_id": k, "ids": ids} for k, ids in lists])
        if taken:
            self.add_many({lists[i][0]: lists[i][1] for i in sorted(taken)})  # counted there
            lists = [kv for i, kv in enumerate(lists) if i not in taken]
        self._count(lists)

    def lookup(self, key: str, limit: int | None = None) -> list[str]:
        """The ids of a list, newest first (the head, then the segments from the last sealed); with `limit`,
        segments are read only until that many ids are known."""
        head = self.col.find_one({"_id": key})
        if head is None:
            return []
        ids = list(head.get("ids") or ())
        if len(ids) >= SEGMENT:
            self.roller.submit(key)  # found too long (seeded in bulk, or its writers were never counted)
        for number in range(int(head.get("s") or 0) - 1, -1, -1):
            if limit is not None and len(ids) >= limit:
                break
            segment = self.col.find_one({"_id": segment_id(key, number)})
            if segment is not None:  # a number may be skipped by racing rollers
                ids.extend(segment.get("ids") or ())
        out = list(dict.fromkeys(ids))
        return out[:limit] if limit is not None else out

    def roll(self, key: str) -> bool:
        """Seal a full head into a new segment; False when it is not full (any more)."""
        head = self.col.find_one({"_id": key})
        ids = list((head or {}).get("ids") or ())
        if head is None or len(ids) < SEGMENT:
            return False
        number = int(head.get("s") or 0)
        self._update(segment_id(key, number), {"$addToSet": {"ids": {"$each": ids}}}, upsert=True)
        self.col.update_one({"_id": key}, {"$pullAll": {"ids": ids}, "$inc": {"s": 1}})
        return True

    def _count(self, items: list[tuple[str, list[str]]]) -> None:
        due = []
        with self._counts_lock:
            if len(self._counts) > _MAX_COUNTED:
                self._counts.clear()
            for key, ids in items:
                n = self._counts.get(key, 0) + len(ids)
                if n >= CHECK_EVERY:
                    due.append(key)
                    n = 0
                self._counts[key] = n
        for key in due:
            self.roller.submit(key)

    def _apply(self, ops: list[tuple[str, dict[str, Any], bool]]) -> None:
        for i in range(0, len(ops), BULK_KEYS):
            chunk = ops[i: i + BULK_KEYS]
            if len(chunk) == 1:
                self._update(*chunk[0])
                continue
            try:
                self.col.bulk_write([UpdateOne({"_id": k}, u, upsert=up) for k, u, up in chunk], ordered=False)
            except (KeyError, PyMongoError):
                for key, update, upsert in chunk:
                    self._update(key, update, upsert)

    def _update(self, key: str, update: dict[str, Any], upsert: bool) -> None:
        for attempt in range(3):
            try:
                self.col.update_one({"_id": key}, update, upsert=upsert)
                return
            except DuplicateKeyError:
                pass  # two writers upserted the same new key: retry as an update of the one that won
            except KeyError:
                pass  # FerretDB v1 can answer a racing upsert with a reply lacking nModified: retry
            if attempt == 2:
                raise RuntimeError(f"could not update posting list {key!r}")


def scan(col: Collection, prefix: str) -> Iterator[tuple[str, list[str]]]:
    """Every list whose key starts with `prefix`: (key, ids) per head and per segment (a full scan: for
    checks that read everything anyway, such as `ehc audit verify`)."""
    for doc in col.find({"_id": {"$regex": f"^(#[0-9]+#)?{re.escape(prefix)}"}}, {"ids": 1}):
        key = key_of(str(doc["_id"]))
        if key.startswith(prefix):
            yield key, [str(i) for i in doc.get("ids") or ()]


class Roller:
    """Rolls full heads in a background thread of this process, so that no request waits for it. Keys wait
    in a bounded queue (a key dropped when it is full is submitted again by its next additions)."""

    def __init__(self, index: KeyIndex, maxsize: int = 1024) -> None:
        self.index = index
        self._queue: queue.Queue[str] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, key: str) -> None:
        try:
            self._queue.put_nowait(key)
        except queue.Full:
            return
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            with self._lock:  # started lazily, and again in a forked worker
                if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                    self._pid = os.getpid()
                    self._thread = threading.Thread(target=self._run, name="ehc-posting-roller", daemon=True)
                    self._thread.start()

    def wait(self) -> None:
        """Until every submitted key has been looked at (tests, benchmarks)."""
        self._queue.join()

    def _roll(self, key: str) -> None:
        try:
            self.index.roll(key)
        except Exception:  # noqa: BLE001 - a failed roll leaves a longer head; the next look retries
            log.warning("posting list %r could not be rolled", key, exc_info=True)
        finally:
            self._queue.task_done()

    def _run(self) -> None:
        while True:
            self._roll(self._queue.get())
