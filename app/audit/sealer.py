"""Sealing: numbers pending audit events, stores them as AuditEvent resources and links them into the SM3
chain, off the request path.

One sealer at a time across all processes (the lease "audit-seal"). A pass reads at most `batches` of the
oldest batches of `_audit_pending` (app.audit.pending) and takes at most `window` (<= `batch`) of their oldest
records; oldest first:
- an event: gets the next sequence number, is built from its access record (writer.build_event) and stored as
  an AuditEvent (Repository.build_doc, so search finds it; a broad search gets its resources' patients added
  first) and gets its chain entry (app.audit.chain);
- an intent with no event: younger than `intent_grace` its request is still running, and it waits (later
  events are sealed meanwhile); older, it waits too while batches beyond those read may hold its event;
  otherwise, its event (named after it: writer.event_id_for) stored nowhere, its process died between the
  operation and its event: it is sealed as an event with outcome 8 (serious failure: the outcome is unknown).
  An intent whose event was sealed from another batch is released without being sealed.
Writes of a pass, in this order: posting lists (idempotent), the AuditEvent documents (replaced if a dead
pass left them), the chain entries with one insert_many (their unique ids make a second sealer fail instead
of forking the chain; each names the records it sealed, `done`, and their batches, `bat`), the release of
those records from their batches, the head, and (when due) a signed checkpoint of the head outside the
database (app.audit.checkpoints). A pass that died half way is completed by the next (`_resync`). Start-up
(plugin.init_app) runs a pass: what a dead process left is recovered when the server starts.

Cost proportional to the new work, never to the backlog. FerretDB v1 on SQLite pushes down only `{_id:
value}` filters and a limit on an unfiltered, unsorted find: any other filter, any sort, a `$in` and every
count scan the whole collection. So a pass
- reads the oldest batches with `find().limit(batches)` (SQLite returns rows in insertion order; batch and
  record ids sort by time, pending.pending_id, and the window is ordered by record id), or, on MongoDB, with a
  sort on `_id`, which its index serves;
- looks single documents up by `_id` only (whether an old intent's event is sealed, the patients of a broad
  search, the batches of a pass to complete);
- releases what it sealed with one command of one `{_id}` statement per batch (a delete, or a rewrite of the
  records left), never `$in`;
- updates posting lists in bulks of a few keys (FerretDB v1 stalls on large update bulks);
- stops taking new records once it has worked `budget` seconds, and sizes its window to the time passes take
  (halved after a pass longer than `budget`, doubled up to `batch` after one shorter than half of it), so that
  a pass stays well inside the lease (10 s) on a loaded database too.
The background loop (plugin.SealLoop) runs the next pass at once while a pass reports more work (`more`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from app.audit import pending
from app.audit.chain import CHAIN, EVENTS, GENESIS, HEAD_ID, PENDING, STATE, digest, key, link
from app.audit.events import MAX_ENTITIES, add_patients, as_reference, interaction_for, split_path, unresolved_refs
from app.audit.writer import AuditWriter, event_id_for, principal_from
from app.core.access import AccessRecord
from app.core.errors import FhirError
from app.core.timeutil import utcnow
from app.store.keys import keys_for
from app.store.leases import Leases
from app.store.repository import Repository

if TYPE_CHECKING:
    from app.audit.checkpoints import Checkpoints

log = logging.getLogger("ehc.audit")
LEASE = "audit-seal"
RECOVERED = ("the server stopped before the outcome of this request was recorded; "
             "the change may or may not have been applied")
MIN_WINDOW = 10


@dataclass
class SealResult:
    sealed: int  # events sealed by this pass
    head: int  # last sealed sequence number
    waiting: int = 0  # intents whose request is still running
    recovered: int = 0  # intents of dead processes sealed as events
    more: bool = False  # the pass left work behind (a full window, or its time budget ran out)
    seconds: float = 0.0  # how long the pass took
    checkpoint: bool = False  # it wrote a signed checkpoint


class Sealer:
    def __init__(self, db: Database, repo: Repository, leases: Leases, writer: AuditWriter, *,
                 intent_grace: float = 60.0, batch: int = 200, budget: float = 2.0,
                 batches: int = pending.BATCH_READ, checkpoints: Checkpoints | None = None) -> None:
        self.repo = repo
        self.leases = leases
        self.writer = writer
        self.events = db[EVENTS]
        self.chain = db[CHAIN]
        self.state = db[STATE]
        self.pending = db[PENDING]
        self.intent_grace = intent_grace
        self.batch = batch  # the largest window
        self.window = batch  # the current one (adapted to the time passes take)
        self.batches = batches  # pending batches a pass reads at most
        self.per_batch = 64.0  # records a batch, as last read (how many batches to ask the database for at once)
        self.budget = budget
        self.checkpoints = checkpoints
        self.ref_codes = repo.keyed_codes(EVENTS)

    def seal(self, wait_seconds: float = 5.0) -> SealResult | None:
        """One pass under the lease; None when another process holds it longer than wait_seconds. This
        process's spooled records are shipped first; under the lease, those that dead processes left in the
        spool (and shipments of this process that failed) are recovered."""
        spool = self.writer.committer.spool
        if spool is not None:
            spool.ship()
        try:
            with self.leases.hold(LEASE, wait_seconds=wait_seconds):
                if spool is not None:
                    spool.recover(self._sealed, budget=self.budget)
                return self._seal()
        except FhirError:
            return None

    def _sealed(self, record: Mapping[str, Any]) -> bool:
        """A spooled record that reached the chain already: its AuditEvent exists (for an intent: its own, as
        a recovered event, or its event's). One `_id` lookup each; asked only of records being recovered."""
        ids = [str(record["_id"])]
        if record.get("kind") == "intent":
            ids.append(event_id_for(ids[0]))
        return any(self.events.find_one({"_id": i}, {"_id": 1}) is not None for i in ids)

    def seal_all(self, wait_seconds: float = 5.0, max_passes: int = 1000) -> SealResult | None:
        """Passes until nothing is left to seal now (the CLI, tests), after the records other live processes
        of this node hold in their spools have been shipped (AuditWriter.settle)."""
        self.writer.settle()
        total: SealResult | None = None
        for _ in range(max_passes):
            result = self.seal(wait_seconds)
            if result is None:
                return total
            if total is None:
                total = result
            else:
                total.sealed += result.sealed
                total.recovered += result.recovered
                total.head, total.waiting, total.more = result.head, result.waiting, result.more
                total.seconds += result.seconds
                total.checkpoint = total.checkpoint or result.checkpoint
            if not result.more:
                break
        return total

    def _seal(self) -> SealResult:
        started = time.monotonic()
        head = self.state.find_one({"_id": HEAD_ID}) or {}
        seq, prev = self._resync(int(head.get("seq") or 0), bytes.fromhex(head["h"]) if head.get("h") else GENESIS)
        result = SealResult(0, seq)
        now = utcnow()
        window = pending.oldest(self.pending, sorted_ids=self.repo.handle.supports_secondary_indexes,
                                events=self.window, per_batch=self.per_batch, limit=self.batches)
        self.per_batch = pending.per_batch(window, self.per_batch)
        stale: set[str] = set()
        queue, left_over = self._queue(window, now, result, stale)
        entries: list[dict[str, Any]] = []
        docs: list[dict[str, Any]] = []
        keys: dict[str, list[str]] = {}
        cache: dict[str, set[str]] = {}
        for record in queue:
            if time.monotonic() - started > self.budget:
                result.more = True  # the rest waits for the next pass, which starts at once
                break
            try:
                doc = self._stored(record, cache)
            except Exception as err:  # noqa: BLE001 - one unreadable record must not stop the chain for good
                log.exception("audit: pending record %s could not be rebuilt; sealed as unreadable", record["_id"])
                doc = self._unreadable(record, err)
            seq += 1
            d = digest(doc)
            prev = link(prev, d)
            done = [record["_id"], *([record["intent"]] if record.get("intent") else [])]
            entries.append({"_id": key(seq), "seq": seq, "ev": doc["_id"], "d": d.hex(), "h": prev.hex(),
                            "done": done, "bat": sorted({window.batch_of[i] for i in done if i in window.batch_of}),
                            "at": now})
            docs.append(doc)
            for k in keys_for(EVENTS, doc.get("ix", {}), self.ref_codes):
                keys.setdefault(k, []).append(doc["_id"])
        if entries:
            self._post(keys)
            self._store(docs)
            self.chain.insert_many(entries, ordered=True)
        if entries or stale:
            pending.release(self.pending, window.batches.values(), stale | {i for e in entries for i in e["done"]})
        if entries:
            self.state.update_one({"_id": HEAD_ID}, {"$set": {"seq": seq, "h": prev.hex(), "at": now}},
                                  upsert=True)
        result.sealed, result.head = len(entries), seq
        result.more = result.more or (left_over and bool(entries))
        if self.checkpoints is not None and seq:
            try:
                result.checkpoint = self.checkpoints.maybe_write(seq, prev.hex())
            except Exception:  # a checkpoint failure must not stop sealing; the next pass retries
                log.exception("audit: could not write the checkpoint of event %s", seq)
        result.seconds = time.monotonic() - started
        if result.seconds > self.budget:
            self.window = max(MIN_WINDOW, self.window // 2)
        elif result.seconds < self.budget / 2 and left_over:
            self.window = min(self.batch, self.window * 2)
        return result

    # -- reading the window -----------------------------------------------------------------------------

    def _queue(self, window: pending.Window, now: datetime, result: SealResult,
               stale: set[str]) -> tuple[list[Mapping[str, Any]], bool]:
        """At most `window` records to seal, oldest first: events, and intents of dead processes (intents that
        wait are passed over, so that they never fill the window); `stale` gets the intents left behind by
        their event (sealed already), to release without sealing. And whether records were left for later."""
        answered = {p.get("intent") for p in window.records if p.get("kind") == "event"}
        queue: list[Mapping[str, Any]] = []
        seen: set[str] = set()
        for p in window.records:
            if len(queue) >= self.window:
                return queue, True
            rid = str(p["_id"])
            if rid in seen:  # a record stored twice (its shipment retried) is sealed once
                continue
            seen.add(rid)
            if p.get("kind") == "event":
                queue.append(p)
            elif rid not in answered:
                if (now - p["at"]).total_seconds() < self.intent_grace or not window.complete:
                    result.waiting += 1  # its request is still running, or its event may be in a later batch
                elif self.events.find_one({"_id": event_id_for(rid)}, {"_id": 1}) is not None:
                    stale.add(rid)  # its event was sealed from another batch
                else:
                    queue.append(p)
                    result.recovered += 1
                    log.warning("audit: the event of intent %s was lost with its process; sealed as unknown", rid)
        return queue, not window.complete

    def _stored(self, pending: Mapping[str, Any], cache: dict[str, set[str]]) -> dict[str, Any]:
        """The AuditEvent document for a pending event (or for an intent whose event was lost)."""
        if pending.get("kind") == "intent":
            rtype, ids = split_path(pending.get("path"))
            principal = principal_from(pending.get("principal"))
            record = AccessRecord(interaction_for(pending.get("method"), pending.get("path")), rtype, ids, "8",
                                  0, principal, pending.get("query") or None, RECOVERED,
                                  remote_addr=pending.get("remote_addr"))
            pending = {**self.writer.pending_event(record, pending["_id"], method=pending.get("method"),
                                                   path=pending.get("path")), "at": pending["at"]}
        res = self.writer.build_event(pending)
        todo = unresolved_refs(res)  # a broad search: its results' patients are looked up now
        if todo:
            res = add_patients(res, self._patients_of(todo[:MAX_ENTITIES], cache))
        return self.repo.build_doc(EVENTS, pending["_id"], 1, pending["at"], res,
                                   pending.get("prov") or self.writer.node.province)

    def _unreadable(self, pending: Mapping[str, Any], err: Exception) -> dict[str, Any]:
        """An event for a pending record this version cannot rebuild (written by another version, or
        damaged): outcome 8, with the stored record in its description, so that it is kept, not lost."""
        raw = json.dumps({k: v for k, v in pending.items() if k != "_id"}, default=str, ensure_ascii=False)
        record = AccessRecord("unknown", None, [], "8", 0, None, None,
                              f"this audit record could not be rebuilt ({type(err).__name__}); as stored: {raw}"[:1000])
        stored_at = pending.get("at")
        at = stored_at if isinstance(stored_at, datetime) else utcnow()
        doc = {**self.writer.pending_event(record, str(pending["_id"]), method=pending.get("method"),
                                           path=pending.get("path")), "at": at}
        return self.repo.build_doc(EVENTS, doc["_id"], 1, at, self.writer.build_event(doc),
                                   str(pending.get("prov") or self.writer.node.province))

    def _patients_of(self, refs: list[str], cache: dict[str, set[str]]) -> set[str]:
        """The patients of the resources a broad search returned, so that residents find its event."""
        patients: set[str] = set()
        for ref in refs:
            if ref not in cache:
                cache[ref] = found = set()
                rtype, ids = split_path(ref)
                if rtype in self.repo.resource_types and ids:
                    target = self.repo.get_raw(rtype, ids[0]) or {}
                    for code in ("patient", "subject"):
                        for value in target.get("ix", {}).get(code, ()):
                            p = as_reference(value) if isinstance(value, str) else None
                            if p and p.startswith("Patient/"):
                                found.add(p)
            patients |= cache[ref]
        return patients

    # -- writing ------------------------------------------------------------------------------------------

    def _post(self, keys: dict[str, list[str]]) -> None:
        """Posting lists of the sealed events (idempotent), a few keys per update command."""
        self.repo.keys.add_many(keys)

    def _store(self, docs: list[dict[str, Any]]) -> None:
        """Insert the AuditEvent documents. Only the sealer writes that collection, so a document already
        there was left by a pass that died before chaining it: it is replaced by this (hashed) one."""
        try:
            self.events.insert_many(docs, ordered=False)
        except BulkWriteError as err:
            dups = {e["index"] for e in err.details.get("writeErrors", []) if e.get("code") == 11000}
            if len(dups) != len(err.details.get("writeErrors", [])):
                raise
            for i in sorted(dups):
                self.events.replace_one({"_id": docs[i]["_id"]}, docs[i])

    def _resync(self, seq: int, prev: bytes) -> tuple[int, bytes]:
        """Complete a pass that died after appending chain entries but before moving the head."""
        moved = False
        done: set[str] = set()
        batch_ids: set[str] = set()
        while True:
            entry = self.chain.find_one({"_id": key(seq + 1)})
            if entry is None:
                break
            sealed = entry.get("done") or [entry["ev"]]
            done.update(sealed)
            batch_ids.update(entry.get("bat") or sealed)  # entries of earlier versions: records stored alone
            seq, prev, moved = seq + 1, bytes.fromhex(entry["h"]), True
        if moved:
            held = (self.pending.find_one({"_id": b}) for b in sorted(batch_ids))
            pending.release(self.pending, [b for b in held if b is not None], done)
            self.state.update_one({"_id": HEAD_ID}, {"$set": {"seq": seq, "h": prev.hex()}}, upsert=True)
        return seq, prev
