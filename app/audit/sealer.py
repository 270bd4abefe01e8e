"""Sealing: numbers pending audit events, stores them as AuditEvent resources and links them into the SM3
chain, off the request path.

One sealer at a time across all processes (the lease "audit-seal"). A pass reads `_audit_pending` (only what
is not sealed yet, so the scan stays small) and, oldest first:
- an event: gets the next sequence number, is stored as an AuditEvent (Repository.build_doc, so search finds
  it; a broad search gets its resources' patients added first) and gets its chain entry (app.audit.chain);
- an intent with no event: younger than `intent_grace` its request is still running, and it waits (later
  events are sealed meanwhile); older, its process died between the operation and its event, and it is
  sealed as an event with outcome 8 (serious failure: the outcome is unknown).
Writes of a pass, in this order: posting lists (idempotent), the AuditEvent documents (replaced if a dead
pass left them), the chain entries with one insert_many (their unique ids make a second sealer fail instead
of forking the chain), removal of what was sealed from pending, the head. A pass that died half way is
completed by the next (`_resync`). Start-up (plugin.init_app) runs a pass: what a dead process left is
recovered when the server starts. Round trips per pass do not grow with the number of events sealed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from app.audit.chain import CHAIN, EVENTS, GENESIS, HEAD_ID, PENDING, STATE, digest, key, link
from app.audit.events import add_patients, as_reference, interaction_for, split_path
from app.audit.writer import AuditWriter
from app.core.access import AccessRecord, Principal
from app.core.errors import FhirError
from app.core.timeutil import utcnow
from app.store.keys import keys_for
from app.store.leases import Leases
from app.store.repository import Repository

log = logging.getLogger("ehc.audit")
LEASE = "audit-seal"
RECOVERED = ("the server stopped before the outcome of this request was recorded; "
             "the change may or may not have been applied")


@dataclass
class SealResult:
    sealed: int  # events sealed by this pass
    head: int  # last sealed sequence number
    waiting: int = 0  # intents whose request is still running
    recovered: int = 0  # intents of dead processes sealed as events


class Sealer:
    def __init__(self, db: Database, repo: Repository, leases: Leases, writer: AuditWriter, *,
                 intent_grace: float = 60.0, batch: int = 500) -> None:
        self.repo = repo
        self.leases = leases
        self.writer = writer
        self.events = db[EVENTS]
        self.chain = db[CHAIN]
        self.state = db[STATE]
        self.pending = db[PENDING]
        self.intent_grace = intent_grace
        self.batch = batch
        self.ref_codes = repo.keyed_codes(EVENTS)

    def seal(self, wait_seconds: float = 5.0) -> SealResult | None:
        """One pass under the lease; None when another process holds it longer than wait_seconds."""
        try:
            with self.leases.hold(LEASE, wait_seconds=wait_seconds):
                return self._seal()
        except FhirError:
            return None

    def _seal(self) -> SealResult:
        head = self.state.find_one({"_id": HEAD_ID}) or {}
        seq, prev = self._resync(int(head.get("seq") or 0), bytes.fromhex(head["h"]) if head.get("h") else GENESIS)
        result = SealResult(0, seq)
        now = utcnow()
        queue = self._queue(now, result)
        entries: list[dict[str, Any]] = []
        docs: list[dict[str, Any]] = []
        keys: dict[str, list[str]] = {}
        for pending in queue[:self.batch]:
            doc = self._stored(pending)
            seq += 1
            d = digest(doc)
            prev = link(prev, d)
            entries.append({"_id": key(seq), "seq": seq, "ev": doc["_id"], "d": d.hex(), "h": prev.hex(),
                            "done": [pending["_id"], *([pending["intent"]] if pending.get("intent") else [])],
                            "at": now})
            docs.append(doc)
            for k in keys_for(EVENTS, doc.get("ix", {}), self.ref_codes):
                keys.setdefault(k, []).append(doc["_id"])
        if entries:
            for k, ids in sorted(keys.items()):  # one update each: FerretDB v1 can stall on large bulks
                self.repo.keys.col.update_one({"_id": k}, {"$addToSet": {"ids": {"$each": ids}}}, upsert=True)
            self._store(docs)
            self.chain.insert_many(entries, ordered=True)
            # pending holds only what is not sealed yet: small, so the scan a $in costs there is cheap
            self.pending.delete_many({"_id": {"$in": [i for e in entries for i in e["done"]]}})
            self.state.update_one({"_id": HEAD_ID}, {"$set": {"seq": seq, "h": prev.hex(), "at": now}},
                                  upsert=True)
        result.sealed, result.head = len(entries), seq
        return result

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

    def _queue(self, now: datetime, result: SealResult) -> list[dict[str, Any]]:
        """Pending events, and intents of dead processes, oldest first."""
        items = list(self.pending.find({}))
        answered = {p.get("intent") for p in items if p.get("kind") == "event"}
        queue = []
        for p in items:
            if p.get("kind") == "event":
                queue.append(p)
            elif p["_id"] not in answered:
                if (now - p["at"]).total_seconds() < self.intent_grace:
                    result.waiting += 1
                else:
                    queue.append(p)
                    result.recovered += 1
                    log.warning("audit: the event of intent %s was lost with its process; sealed as unknown",
                                p["_id"])
        queue.sort(key=lambda p: (p["at"], p["_id"]))
        return queue

    def _stored(self, pending: dict[str, Any]) -> dict[str, Any]:
        """The AuditEvent document for a pending event (or for an intent whose event was lost)."""
        if pending.get("kind") == "intent":
            rtype, ids = split_path(pending.get("path"))
            principal = Principal(**pending["principal"]) if pending.get("principal") else None
            record = AccessRecord(interaction_for(pending.get("method"), pending.get("path")), rtype, ids, "8",
                                  0, principal, pending.get("query") or None, RECOVERED,
                                  remote_addr=pending.get("remote_addr"))
            pending = self.writer.pending_event(record, pending["_id"], method=pending.get("method"),
                                                path=pending.get("path"))
        res = pending["res"]
        if pending.get("todo"):
            res = add_patients(res, self._patients_of(pending["todo"]))
        return self.repo.build_doc(EVENTS, pending["_id"], 1, pending["at"], res,
                                   pending.get("prov") or self.writer.node.province)

    def _patients_of(self, refs: list[str]) -> set[str]:
        """The patients of the resources a broad search returned, so that residents find its event."""
        patients: set[str] = set()
        for ref in refs:
            rtype, ids = split_path(ref)
            if rtype not in self.repo.resource_types or not ids:
                continue
            target = self.repo.get_raw(rtype, ids[0]) or {}
            for code in ("patient", "subject"):
                for value in target.get("ix", {}).get(code, ()):
                    p = as_reference(value) if isinstance(value, str) else None
                    if p and p.startswith("Patient/"):
                        patients.add(p)
        return patients

    def _resync(self, seq: int, prev: bytes) -> tuple[int, bytes]:
        """Complete a pass that died after appending chain entries but before moving the head."""
        moved = False
        while True:
            entry = self.chain.find_one({"_id": key(seq + 1)})
            if entry is None:
                break
            for i in entry.get("done") or [entry["ev"]]:
                self.pending.delete_one({"_id": i})
            seq, prev, moved = seq + 1, bytes.fromhex(entry["h"]), True
        if moved:
            self.state.update_one({"_id": HEAD_ID}, {"$set": {"seq": seq, "h": prev.hex()}}, upsert=True)
        return seq, prev
