"""Atomic transactions without multi-document transactions (FerretDB v1 has none).

Before a transaction touches anything, a journal document records, for every entry, the version it
replaces (before) and the version it writes (after), and names its owner: this process (app.store.owners).
Then the entries are applied one by one. If one fails, for whatever reason (a version race, a document the
database refuses, the database going away), the applied ones are undone from the journal before the error is
answered; when the database is unreachable the undo is retried by the heartbeat until it succeeds. Only a
fully applied transaction deletes its journal, and only while it still owns it.

If the process dies half way, its heartbeat stops; once it is `timeout` seconds old (5 by default) any other
process, at start-up, before each transaction and on every heartbeat, takes the journal over (one atomic
update, so only one does) and undoes what was applied. So nothing half-applied stays visible for more than a
few seconds after a crash, and a live process's transaction is never undone under it.

Readers may see a transaction's entries appear one after another while it is being applied (no
isolation); atomicity holds: after any crash or error either all or none of it is stored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from app.core.errors import FhirError, conflict, precondition_failed
from app.core.timeutil import utcnow
from app.store.database import DatabaseUnavailable
from app.store.events import StoreEvent
from app.store.owners import OWNER_TIMEOUT, owner_for
from app.store.repository import Repository, Stored, WriteContext, _VersionTaken

log = logging.getLogger("ehc.store")


@dataclass
class PlannedWrite:
    """One entry of a transaction, fully resolved: ids assigned, references rewritten."""

    method: str  # create | update | delete
    resource_type: str
    id: str
    resource: dict[str, Any] | None
    if_match: int | None = None
    registration: bool = False  # the master index turned a create into adding identifiers to a known resident
    base: int | None = None  # the version a patch was applied to: written over that version only


def _fault_pause(applied: int) -> None:
    """Test hook for the kill-mid-transaction test: EHC_FAULT_TXN_PAUSE="<after n entries>:<seconds>"."""
    spec = os.environ.get("EHC_FAULT_TXN_PAUSE")
    if spec:
        after, seconds = spec.split(":")
        if applied == int(after):
            time.sleep(float(seconds))


def _fault_refused(position: int, doc: dict[str, Any]) -> dict[str, Any]:
    """Test hook: EHC_FAULT_TXN_REFUSE="<n>" gives the n-th entry (1-based) a top-level field name starting with
    "$", so that its real write is refused by the database half way through the transaction (FerretDB refuses it
    in every write, MongoDB in a replacing update: make the n-th entry an update)."""
    spec = os.environ.get("EHC_FAULT_TXN_REFUSE")
    if spec and int(spec) == position:
        return {**doc, "$refused": True}
    return doc


class TransactionJournal:
    def __init__(self, repo: Repository, owner_timeout: float = OWNER_TIMEOUT) -> None:
        self.repo = repo
        self.col = repo.db["_journal"]
        self.owner = owner_for(repo.db, owner_timeout)
        # Our own transactions whose undo failed (database down): txid -> entries, retried until done.
        self._failed: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.owner.add_task(self.recover)

    def apply(self, writes: list[PlannedWrite], context: WriteContext) -> list[Stored | None]:
        repo = self.repo
        self.owner.ensure_fresh()
        self.recover()
        now = utcnow()
        entries: list[dict[str, Any]] = []
        pending_refs = {f"{w.resource_type}/{w.id}" for w in writes if w.method != "delete"}
        written = {(w.resource_type, w.id) for w in writes}
        for w in writes:
            prior = repo.get_raw(w.resource_type, w.id)
            if w.if_match is not None and (prior is None or prior["vid"] != w.if_match):
                raise precondition_failed(
                    f"{w.resource_type}/{w.id} is not at version {w.if_match} (If-Match in the transaction)")
            if w.base is not None and (prior is None or prior["vid"] != w.base):
                raise conflict(f"{w.resource_type}/{w.id} was changed by another request while the transaction "
                               f"patched version {w.base}; nothing was stored: retry")
            if w.method == "delete" and (prior is None or prior.get("del")):
                entries.append({"w": w, "before": prior, "after": None})
                continue
            if w.resource is not None:
                repo.check_references(w.resource_type, w.resource, pending=pending_refs, prior=prior)
            # The change gate judges every entry, before and after, before anything is applied.
            version = repo.prepare_version(w.resource_type, w.id, prior, w.resource, context, now,
                                           registration=w.registration)
            if w.resource is None:  # a delete (judged first: its referrers are named only to who may delete it),
                # refused while anything this transaction does not rewrite refers to it
                _refuse_referenced(w, [r for r in repo.referrers(w.resource_type, w.id) if r not in written])
            entries.append({"w": w, "before": prior, "after": version.stored, "clear": version.clear})
        txid = uuid.uuid4().hex
        journal_entries = [{"type": e["w"].resource_type, "id": e["w"].id, "before": e["before"],
                            "after": e["after"]} for e in entries]
        try:
            self.col.insert_one({"_id": txid, "state": "pending", "at": now, "owner": self.owner.id,
                                 "entries": journal_entries})
        except ConnectionFailure as err:
            with self._lock:  # it may have been stored with the reply lost: drop it once the database answers
                self._failed[txid] = []
            raise DatabaseUnavailable() from err
        applied: list[dict[str, Any]] = []
        try:
            with self.owner.transaction(txid):
                for e in entries:
                    if e["after"] is not None:
                        doc = _fault_refused(len(applied) + 1, e["after"])
                        repo.store_version(e["w"].resource_type, e["before"], doc, utcnow())
                    applied.append(e)
                    _fault_pause(len(applied))
            _check_again(repo, entries)
            committed = self.col.find_one_and_delete({"_id": txid, "owner": self.owner.id})
        except BaseException as err:
            # The entry under way is undone too (it may be half written), unless it lost its version race:
            # then it wrote nothing, and undoing it would put its version before over the winner's.
            reached = len(applied) + (0 if isinstance(err, _VersionTaken) else 1)
            self._abort(txid, journal_entries[:reached])
            mapped = _as_domain_error(err)
            if mapped is err:
                raise
            raise mapped from err
        if committed is None:
            # Another process judged us dead (heartbeat stale) and took the journal over to undo it.
            self._abort(txid, journal_entries)
            raise DatabaseUnavailable("the transaction was interrupted (this server stalled); nothing was stored")
        results: list[Stored | None] = []
        for e in entries:
            w, after = e["w"], e["after"]
            if after is None:
                results.append(None)
                continue
            stored = Stored.from_doc(w.resource_type, e["clear"])
            previous = repo.decode(e["before"]).get("res") if e["before"] else None  # type: ignore[union-attr]
            name = "deleted" if after["del"] else ("created" if e["before"] is None else "updated")
            repo.events.fire(StoreEvent(name, w.resource_type, stored.resource, context, previous=previous,
                                        extra={"id": w.id}))
            results.append(stored)
        return results

    def _abort(self, txid: str, entries: list[dict[str, Any]]) -> None:
        """Undo `entries` (newest first) and drop the journal; when the database does not answer, keep them
        for the heartbeat to retry (the journal stays ours meanwhile, so nobody else undoes it twice)."""
        try:
            self._undo_all(txid, entries)
        except PyMongoError as err:
            log.warning("transaction %s: undo failed (%s); retrying in the background", txid, type(err).__name__)
            with self._lock:
                self._failed[txid] = entries

    def _undo_all(self, txid: str, entries: list[dict[str, Any]]) -> None:
        for e in reversed(entries):
            self._undo(e["type"], e.get("before"), e.get("after"), txid)
        self.col.delete_one({"_id": txid})

    def _undo(self, rtype: str, before: dict[str, Any] | None, after: dict[str, Any] | None, txid: str) -> None:
        if after is None:
            return
        repo = self.repo
        rid = after["_id"]
        current = repo.current(rtype).find_one({"_id": rid})
        if before is None:
            if current is not None and current["vid"] == after["vid"]:
                repo.current(rtype).delete_one({"_id": rid})
            return
        # Version n+1 is made only through the history slot of version n. When that slot is not this
        # transaction's, another writer made the version there is now, and it stays.
        slot_id = f"{rid}/{before['vid']}"
        slot = repo.history_col(rtype).find_one({"_id": slot_id}, {"txn": 1})
        if slot is None or slot.get("txn") != txid:
            return
        if current is not None and current["vid"] == after["vid"]:
            repo.current(rtype).replace_one({"_id": rid}, before)
        if current is None or current["vid"] <= after["vid"]:
            repo.history_col(rtype).delete_one({"_id": slot_id})  # release the slot

    def recover(self) -> int:
        """Undo every transaction left pending by a dead process, and retry our own failed undos.
        Returns how many were undone."""
        self.owner.start()  # from now on the heartbeat also runs this every second
        count = self._retry_failed()
        seen: dict[str, bool] = {}
        for journal in list(self.col.find({}, {"entries": 0})):
            owner = journal.get("owner")
            if owner == self.owner.id or self.owner.is_alive(owner, journal.get("at"), seen):
                continue
            taken = self.col.find_one_and_update({"_id": journal["_id"], "owner": owner},
                                                 {"$set": {"owner": self.owner.id}},
                                                 return_document=ReturnDocument.AFTER)
            if taken is None:
                continue  # another process took it first
            log.warning("undoing transaction %s left pending by %s (heartbeat stale)", taken["_id"], owner)
            self._abort(taken["_id"], taken.get("entries", []))
            count += 1
        return count

    def _retry_failed(self) -> int:
        with self._lock:
            failed, self._failed = self._failed, {}
        done = 0
        for txid, entries in failed.items():
            try:
                self._undo_all(txid, entries)
                done += 1
                log.warning("transaction %s: undone after the database came back", txid)
            except PyMongoError:
                with self._lock:
                    self._failed.setdefault(txid, entries)
        return done


def _refuse_referenced(w: PlannedWrite, referrers: list[tuple[str, str]]) -> None:
    if referrers:
        sample = ", ".join(f"{t}/{i}" for t, i in referrers[:5])
        raise conflict(f"{w.resource_type}/{w.id} is referenced by {len(referrers)} resource(s) ({sample}); delete "
                       "or change those in the same transaction first")


def _check_again(repo: Repository, entries: list[dict[str, Any]]) -> None:
    """After every entry is applied, before the journal commits: the references of what was written and the
    referrers of what was deleted, checked again on what is stored now (as Repository.create and delete do), so
    that a transaction and a write or delete of another request at once cannot leave a dangling reference; a
    failure here undoes the whole transaction."""
    for e in entries:
        w = e["w"]
        if e["after"] is None:
            continue
        if w.resource is not None:
            repo.check_references(w.resource_type, w.resource, prior=e["before"])
        else:
            _refuse_referenced(w, repo.referrers(w.resource_type, w.id))


def _as_domain_error(err: BaseException) -> BaseException:
    """What the client is told after a failed transaction was undone."""
    if isinstance(err, (_VersionTaken, DuplicateKeyError)):
        return FhirError(409, "a resource in the transaction was changed by another request meanwhile; "
                              "nothing was stored", code="conflict")
    if isinstance(err, ConnectionFailure):
        return DatabaseUnavailable("the database became unreachable during the transaction; nothing of it "
                                   "is kept (what was applied is undone)")
    if isinstance(err, PyMongoError):
        log.warning("transaction failed on a database error, undone: %s", err)
        return FhirError(500, "the database refused a write of the transaction; nothing was stored",
                         code="exception")
    return err
