"""Atomic transactions without multi-document transactions (FerretDB v1 has none).

Before a transaction touches anything, a journal document records, for every entry, the version it
replaces (before) and the version it writes (after). Then the entries are applied one by one. If one
fails, the applied ones are undone from the journal. If the process dies half way, start-up recovery
(`recover`) finds the journal still pending and undoes what was applied, so nothing partial survives a
restart. Only a fully applied transaction deletes its journal.

Readers may see a transaction's entries appear one after another while it is being applied (no
isolation); atomicity holds: after any crash either all or none of it is stored.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError

from app.core.errors import FhirError, precondition_failed
from app.core.timeutil import utcnow
from app.store.events import StoreEvent
from app.store.repository import Repository, Stored, WriteContext, _VersionTaken


@dataclass
class PlannedWrite:
    """One entry of a transaction, fully resolved: ids assigned, references rewritten."""

    method: str  # create | update | delete
    resource_type: str
    id: str
    resource: dict[str, Any] | None
    if_match: int | None = None


def _fault_pause(applied: int) -> None:
    """Test hook for the kill-mid-transaction test: EHC_FAULT_TXN_PAUSE="<after n entries>:<seconds>"."""
    spec = os.environ.get("EHC_FAULT_TXN_PAUSE")
    if spec:
        after, seconds = spec.split(":")
        if applied == int(after):
            time.sleep(float(seconds))


class TransactionJournal:
    def __init__(self, repo: Repository, recovery_age: float = 120.0) -> None:
        self.repo = repo
        self.col = repo.db["_journal"]
        self.recovery_age = recovery_age

    def apply(self, writes: list[PlannedWrite], context: WriteContext) -> list[Stored | None]:
        repo = self.repo
        self.recover()
        now = utcnow()
        entries: list[dict[str, Any]] = []
        pending_refs = {f"{w.resource_type}/{w.id}" for w in writes if w.method != "delete"}
        for w in writes:
            prior = repo.get_raw(w.resource_type, w.id)
            if w.if_match is not None and (prior is None or prior["vid"] != w.if_match):
                raise precondition_failed(
                    f"{w.resource_type}/{w.id} is not at version {w.if_match} (If-Match in the transaction)")
            if w.method == "delete" and (prior is None or prior.get("del")):
                entries.append({"w": w, "before": prior, "after": None})
                continue
            if w.resource is not None:
                repo.check_references(w.resource_type, w.resource, pending=pending_refs)
            vid = (prior["vid"] if prior else 0) + 1
            after = repo.build_doc(w.resource_type, w.id, vid, now, w.resource, context.province)
            entries.append({"w": w, "before": prior, "after": after})
        txid = uuid.uuid4().hex
        self.col.insert_one({
            "_id": txid, "state": "pending", "at": now,
            "entries": [{"type": e["w"].resource_type, "id": e["w"].id, "before": e["before"], "after": e["after"]}
                        for e in entries],
        })
        applied: list[dict[str, Any]] = []
        try:
            for e in entries:
                if e["after"] is not None:
                    repo.store_version(e["w"].resource_type, e["before"], e["after"], utcnow())
                applied.append(e)
                _fault_pause(len(applied))
        except (_VersionTaken, DuplicateKeyError):
            for done in reversed(applied):
                self._undo(done["w"].resource_type, done["before"], done["after"])
            self.col.delete_one({"_id": txid})
            raise FhirError(409, "a resource in the transaction was changed by another request meanwhile; "
                                 "nothing was stored", code="conflict") from None
        self.col.delete_one({"_id": txid})
        results: list[Stored | None] = []
        for e in entries:
            w, after = e["w"], e["after"]
            if after is None:
                results.append(None)
                continue
            stored = Stored.from_doc(w.resource_type, repo.decode(after))  # type: ignore[arg-type]
            previous = repo.decode(e["before"]).get("res") if e["before"] else None  # type: ignore[union-attr]
            name = "deleted" if after["del"] else ("created" if e["before"] is None else "updated")
            repo.events.fire(StoreEvent(name, w.resource_type, stored.resource, context, previous=previous,
                                        extra={"id": w.id}))
            results.append(stored)
        return results

    def _undo(self, rtype: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        if after is None:
            return
        repo = self.repo
        current = repo.current(rtype).find_one({"_id": after["_id"]})
        if current is not None and current["vid"] == after["vid"]:
            if before is None:
                repo.current(rtype).delete_one({"_id": after["_id"]})
            else:
                repo.current(rtype).replace_one({"_id": after["_id"]}, before)
        if before is not None:
            # Release the history slot this transaction claimed for `before`.
            slot_id = f"{after['_id']}/{before['vid']}"
            if current is None or current["vid"] <= after["vid"]:
                repo.history_col(rtype).delete_one({"_id": slot_id})

    def recover(self) -> int:
        """Undo every transaction left pending by a process that died. Returns how many."""
        count = 0
        cutoff = utcnow() - timedelta(seconds=self.recovery_age)
        for journal in list(self.col.find({})):
            if journal["at"] > cutoff:
                continue
            for e in reversed(journal.get("entries", [])):
                self._undo(e["type"], e.get("before"), e.get("after"))
            self.col.delete_one({"_id": journal["_id"]})
            count += 1
        return count
