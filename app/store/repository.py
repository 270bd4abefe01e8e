"""The FHIR repository on MongoDB: create, read, vread, update, patch, delete, history (FHIR http.html).

Layout, per resource type T:
- collection T: the current version of each resource, `{_id, vid, ts, del, prov, res, ix, so}`;
  a delete leaves a tombstone (`del: true`) so that read answers 410 and the version count goes on.
- collection T_history: every earlier version, `_id = "<id>/<vid>"`.
- collection _keys: posting lists (app.store.keys).

Optimistic concurrency without read-then-write races: moving a resource from version n to n+1 first
inserts version n into T_history under the unique `_id "<id>/<n>"`. Of two writers that both read n,
exactly one insert succeeds; the other gets a duplicate key and answers 412 (with If-Match) or retries.
Only `_id` filters are used, because FerretDB v1 answers nothing else from an index.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo import IndexModel
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from app.core.access import Change, Decision
from app.core.errors import FhirError, conflict, forbidden, gone, not_found, precondition_failed, unprocessable
from app.core.fhirjson import FhirDecimal, decimal_shadow, restore_decimals
from app.core.ids import is_valid_id, new_id, replaced_by, split_reference
from app.core.timeutil import to_instant, utcnow
from app.search.extract import extract_index
from app.search.registry import SearchRegistry
from app.store.database import DatabaseHandle, insert_new
from app.store.events import PRIOR_DOC, EventBus, StoreEvent
from app.store.keys import KeyIndex, keys_for, reference_key
from app.store.owners import Claim, fault_pause_after_claim, owner_for
from app.store.protect import FieldProtector

# A history slot written before slots named their owner (no `owner` field), older than this, whose current
# document never moved on, belongs to a writer that died. Slots that name their owner are taken over only
# when that owner's heartbeat is stale (app.store.owners), however long a live writer stalls.
STALE_SLOT = timedelta(seconds=5)
MAX_WRITE_RETRIES = 20
# MongoDB's limit is 64 indexes a collection (the _id index included).
INDEXES_PER_TYPE = 60
PREFERRED_INDEXES = ("identifier", "patient", "subject", "code", "date", "_lastUpdated", "status", "encounter",
                     "category", "name", "family", "given", "birthdate", "phone", "organization", "_tag")


# WriteContext.extra key: {rid: Rebase} for a registration the master index merged into a stored resident.
REBASE = "registration_rebase"


@dataclass(frozen=True)
class Rebase:
    """What a registration adds to a stored record, to apply again to a version written after `vid` (the one it
    was merged into): so that a change made meanwhile is kept, not overwritten by the merge of the older one."""

    vid: int
    apply: Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class WriteContext:
    """Who writes: recorded with each new record (province) and passed to event handlers and the change gate."""

    province: str = "00"
    client_id: str | None = None
    organization: str | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    principal: Any = None  # the caller (app.core.access.Principal); None: a write of the server itself


# The change decision (the access policy's `admit`), injected so that storage never imports the policy.
ChangeDecision = Callable[[Any, Change], Decision]


@dataclass
class Stored:
    """One version of a resource as stored."""

    resource_type: str
    id: str
    vid: int
    ts: datetime
    deleted: bool
    resource: dict[str, Any] | None
    province: str | None = None
    unchanged: bool = False  # a write that changed nothing: this is the version that was there already

    @classmethod
    def from_doc(cls, resource_type: str, doc: dict[str, Any]) -> Stored:
        rid = doc.get("rid") or doc["_id"]
        return cls(resource_type, rid, doc["vid"], doc["ts"], doc.get("del", False), doc.get("res"), doc.get("prov"))


def write_context(event: StoreEvent) -> WriteContext:
    """The WriteContext a store event was fired with (a fresh one when its caller gave none)."""
    return event.context if isinstance(event.context, WriteContext) else WriteContext()


@dataclass(frozen=True)
class Version:
    """A version about to be written: `stored`, the document as the database keeps it (protected values
    encrypted and blinded); `clear`, the same version as a reader gets it back, so a writer answers without
    decrypting what it has just encrypted."""

    stored: dict[str, Any]
    clear: dict[str, Any]


class Repository:
    def __init__(
        self,
        handle: DatabaseHandle,
        registry: SearchRegistry,
        events: EventBus | None = None,
        resource_types: Iterable[str] = (),
        protector: FieldProtector | None = None,
        independent_types: Iterable[str] = (),
        keyed_references: dict[str, list[str]] | None = None,
    ) -> None:
        self.handle = handle
        self.db = handle.db
        self.registry = registry
        self.events = events or EventBus()
        self.resource_types = set(resource_types) or set(registry.resource_types())
        self.keys = KeyIndex(self.db["_keys"])
        self.protector = protector
        self.decide_change: ChangeDecision | None = None  # set at wiring time (app.services)
        self._referring: dict[str, list[str]] = {}
        # Types whose references are records of an access, not dependencies (AuditEvent).
        self.independent_types = set(independent_types)
        # The reference parameters that get posting lists (all of them unless the type's config narrows it).
        self._reference_codes = {
            t: [c for c, p in registry.params(t).items() if p.type == "reference"
                and (keyed_references is None or t not in keyed_references or c in keyed_references[t])]
            for t in self.resource_types
        }

    # -- collections ---------------------------------------------------------------------------------

    def current(self, resource_type: str) -> Collection:
        return self.db[resource_type]

    def history_col(self, resource_type: str) -> Collection:
        return self.db[f"{resource_type}_history"]

    def keyed_codes(self, resource_type: str) -> list[str]:
        return self._reference_codes.get(resource_type, [])

    def check_type(self, resource_type: str) -> None:
        if resource_type not in self.resource_types:
            raise not_found(f"resource type {resource_type!r} is not supported by this server")

    def ensure_indexes(self) -> None:
        """Secondary indexes where the server uses them (MongoDB, not FerretDB v1): one createIndexes command per
        collection. MongoDB allows 64 indexes a collection and every R4 type has many search parameters, so each
        type gets at most INDEXES_PER_TYPE: the parameters selective searches use first (identifier, patient,
        subject, code, date ...), then the other references (chains, compartments), then the rest; sort-key
        indexes only for dates. Searches on the others are answered by the exact matcher over fewer candidates."""
        if not self.handle.supports_secondary_indexes:
            return
        for rtype in sorted(self.resource_types):
            self.current(rtype).create_indexes(index_plan(self.registry, rtype))
            self.history_col(rtype).create_indexes([IndexModel([("ts", -1)], name="ts")])

    # -- reads ---------------------------------------------------------------------------------------

    def get_raw(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        """The stored document as it is in the database (protected values encrypted): for writers."""
        if not is_valid_id(rid):
            return None
        return self.current(resource_type).find_one({"_id": rid})

    def get_doc(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        """The stored document with protected values decrypted: for readers."""
        return self.decode(self.get_raw(resource_type, rid), owned=True)

    def decode(self, doc: dict[str, Any] | None, owned: bool = False) -> dict[str, Any] | None:
        """Decimals restored and protected values decrypted. `owned`: doc was just read and nobody else holds
        it, so it is changed in place (no copy)."""
        if doc and doc.get("dec") and doc.get("res"):
            restore_decimals(doc["res"], doc["dec"])  # the exact decimal texts the doubles lost
        return self.protector.decode(doc, owned) if self.protector and doc else doc

    def read(self, resource_type: str, rid: str, context: Any = None, fire: bool = True,
             doc: dict[str, Any] | None = None) -> Stored:
        """The current version (doc: the decoded document when the caller already fetched it)."""
        self.check_type(resource_type)
        if doc is None:
            doc = self.get_doc(resource_type, rid)
        if doc is None:
            raise not_found(f"{resource_type}/{rid} is not known")
        stored = Stored.from_doc(resource_type, doc)
        if stored.deleted:
            raise gone(f"{resource_type}/{rid} was deleted (version {stored.vid})")
        if fire:
            self.events.fire(StoreEvent("read", resource_type, stored.resource, context))
        return stored

    def vread(self, resource_type: str, rid: str, vid: str, current: dict[str, Any] | None = None) -> Stored:
        """A version; `current`: the current document, when the caller has read it already (get_doc)."""
        self.check_type(resource_type)
        if not vid.isdigit():
            raise not_found(f"version {vid!r} of {resource_type}/{rid} is not known")
        doc = current if current is not None else self.get_doc(resource_type, rid)
        if doc is None:
            raise not_found(f"{resource_type}/{rid} is not known")
        if doc["vid"] == int(vid):
            stored = Stored.from_doc(resource_type, doc)
        else:
            hist = self.decode(self.history_col(resource_type).find_one({"_id": f"{rid}/{int(vid)}"}), owned=True)
            if hist is None or int(vid) > doc["vid"]:
                raise not_found(f"version {vid} of {resource_type}/{rid} is not known")
            stored = Stored.from_doc(resource_type, hist)
        if stored.deleted:
            raise gone(f"version {vid} of {resource_type}/{rid} is a deletion")
        return stored

    def exists(self, resource_type: str, rid: str) -> bool:
        doc = self.get_raw(resource_type, rid)  # nothing to decrypt for a yes/no
        return bool(doc and not doc.get("del"))

    # -- writes --------------------------------------------------------------------------------------

    def create(self, resource_type: str, resource: dict[str, Any], context: WriteContext | None = None,
               rid: str | None = None) -> Stored:
        """Create with a server-assigned id (or the given one, for update-as-create and transactions)."""
        self.check_type(resource_type)
        context = context or WriteContext()
        resource = copy.deepcopy(resource)
        resource["resourceType"] = resource_type
        self.events.fire(StoreEvent("pre-create", resource_type, resource, context))
        if resource.get("_ehc_existing"):
            # A pre-create handler (the master patient index) turned the create into an update of an
            # existing record; it left the target id and the merged resource.
            existing_id = resource.pop("_ehc_existing")
            # a new resident (the index says no version exists yet) is inserted without reading first
            return self.update(resource_type, existing_id, resource, context=context, fire_pre=False,
                               registration=True, known_absent=context.extra.get("mpi_new_id") == existing_id)
        rid = rid or new_id()
        stored = self._write(resource_type, rid, resource, None, context)
        try:
            # Checked after the write, not before, as `delete` checks its referrers again after its tombstone:
            # of a create and a delete of its target at once, one sees the other and gives way, so nothing is
            # left referring to a deleted resource.
            self.check_references(resource_type, resource)
        except FhirError:
            self._revert(resource_type, rid, None, stored.vid)
            raise
        self.events.fire(StoreEvent("created", resource_type, stored.resource, context))
        return stored

    def _revert(self, resource_type: str, rid: str, prior: dict[str, Any] | None, written: int) -> None:
        """Undo version `written`, which this request has just written over `prior` (None: it was a create) and
        found it must not keep: the version before is current again (or the resource is gone), with its posting
        lists, and the history slot of the version before (this request's) is free. A version written on top of
        it meanwhile stays."""
        col = self.current(resource_type)
        if prior is None:
            doc = col.find_one_and_delete({"_id": rid, "vid": written})
        else:
            doc = col.find_one_and_replace({"_id": rid, "vid": written}, prior)
        if doc is None:
            return
        codes = self._reference_codes.get(resource_type, ())
        new_keys = keys_for(resource_type, doc.get("ix", {}), codes)
        old_keys = keys_for(resource_type, prior.get("ix", {}), codes) if prior is not None else set()
        self.keys.remove(rid, new_keys - old_keys)
        self.keys.add(rid, old_keys - new_keys)
        if prior is not None:
            self.history_col(resource_type).delete_one({"_id": f"{rid}/{prior['vid']}"})

    def update(self, resource_type: str, rid: str, resource: dict[str, Any], *, if_match: int | None = None,
               context: WriteContext | None = None, fire_pre: bool = True,
               on_conflict_retry: bool = True, registration: bool = False,
               known_prior: dict[str, Any] | None = None, known_absent: bool = False,
               keep_unchanged: bool = False) -> Stored:
        """Update (or create with a client-chosen id). Returns the new version; .vid == 1 means created.
        registration: the master index turned a create into adding identifiers to a known resident.
        keep_unchanged: a write whose content is the current version's (`same_content`) makes no new version
        (the REST update and patch: HAPI's behaviour); registrations always keep. Such a write is still judged
        (If-Match, the change gate), fires no storage event, and returns the current version, `.unchanged`."""
        self.check_type(resource_type)
        if not is_valid_id(rid):
            raise FhirError(400, f"{rid!r} is not a valid FHIR id", expression="id")
        context = context or WriteContext()
        resource = copy.deepcopy(resource)
        resource["resourceType"] = resource_type
        resource["id"] = rid
        extra = {PRIOR_DOC: (rid, self.decode(known_prior))} if known_prior is not None else {}
        if fire_pre:
            self.events.fire(StoreEvent("pre-update", resource_type, resource, context, extra=extra))
        for attempt in range(MAX_WRITE_RETRIES):
            # known_prior: the raw current document the caller read just before (saves reading it again)
            # known_absent: nothing stored yet (a race is caught by the unique insert, and retried)
            if attempt == 0 and (known_prior is not None or known_absent):
                prior = known_prior
            else:
                prior = self.get_raw(resource_type, rid)
            if if_match is not None:
                if prior is None:
                    raise precondition_failed(f"{resource_type}/{rid} does not exist (If-Match {if_match})")
                if prior["vid"] != if_match:
                    raise precondition_failed(
                        f"{resource_type}/{rid} is at version {prior['vid']}, not {if_match} (If-Match)")
            resource.pop("_ehc_existing", None)
            rebase = context.extra.get(REBASE, {}).get(rid) if registration else None
            if rebase is not None and prior is not None and not prior.get("del") and prior["vid"] != rebase.vid:
                # written since the master index merged the registration into it: merge into this version
                current = self.decode(prior) or prior  # a copy: `prior` is written to the history as it is
                resource = {**rebase.apply(current["res"]), "resourceType": resource_type, "id": rid}
                context.extra[REBASE][rid] = Rebase(prior["vid"], rebase.apply)
            if (registration or keep_unchanged) and prior is not None and not prior.get("del"):
                current = self.decode(prior) or prior
                if same_content(current.get("res") or {}, resource):
                    # A re-registration (or a PUT or PATCH) that changes nothing: no new version, but still judged.
                    self.admit(context, Change(resource_type, current.get("res"), resource, prior.get("prov"),
                                               registration=registration))
                    kept = Stored.from_doc(resource_type, current)
                    kept.unchanged = True
                    return kept
            try:
                stored = self._write(resource_type, rid, resource, prior, context, registration=registration)
            except _VersionTaken:
                if if_match is not None or not on_conflict_retry:
                    raise precondition_failed(
                        f"{resource_type}/{rid} was changed by another request; re-read and retry") from None
                continue
            try:
                self.check_references(resource_type, resource, prior=prior)  # after the write: `create` says why
            except FhirError:
                self._revert(resource_type, rid, prior, stored.vid)
                raise
            event = "created" if prior is None else "updated"
            previous = self.decode(prior).get("res") if prior else None  # type: ignore[union-attr]
            self.events.fire(StoreEvent(event, resource_type, stored.resource, context, previous=previous))
            return stored
        raise conflict(f"{resource_type}/{rid} is being changed by many requests at once; retry")

    def create_many(self, resource_type: str, items: list[tuple[dict[str, Any], WriteContext]]
                    ) -> list[Stored | FhirError]:
        """Create many resources with the commands of a few (the bulk import's batches): per resource the
        same pre-create events, reference check and change gate (`prepare_version`) as `create`; then the
        posting lists of all of them (one insert of the new heads, updates only for heads that exist), one
        insert_many of the documents, and the created event of each, in order, so that every subscriber sees
        each resource as after `create`. A resource whose pre-create handler or change gate refuses it, or
        whose insert fails, gets its FhirError in its place of the answer and is not written; a pre-create
        handler that turns the create into an update of a stored record (the master index's `_ehc_existing`
        naming a registered resident) is written by `update`, one at a time, as `create` would.

        Crash safety: the posting lists are written before the documents (a list may name an id that does not
        exist; every candidate is re-checked), so a process killed at any point leaves documents that are
        found, and no document half-written. Subscribers' created events that had not run yet are those of
        a killed single create too."""
        self.check_type(resource_type)
        out: list[Stored | FhirError | None] = [None] * len(items)
        pending: list[tuple[int, Version, WriteContext]] = []
        codes = self._reference_codes.get(resource_type, ())
        postings: dict[str, list[str]] = {}
        for i, (resource, context) in enumerate(items):
            resource = copy.deepcopy(resource)
            resource["resourceType"] = resource_type
            try:
                self.events.fire(StoreEvent("pre-create", resource_type, resource, context))
                existing_id = resource.pop("_ehc_existing", None)
                if existing_id and context.extra.get("mpi_new_id") != existing_id:
                    out[i] = self.update(resource_type, existing_id, resource, context=context, fire_pre=False,
                                         registration=True)
                    continue
                rid = existing_id or new_id()
                resource["id"] = rid
                self.check_references(resource_type, resource)
                version = self.prepare_version(resource_type, rid, None, resource, context, utcnow(),
                                               registration=bool(existing_id))
            except FhirError as err:
                out[i] = err
                continue
            for key in sorted(keys_for(resource_type, version.stored.get("ix", {}), codes)):
                postings.setdefault(key, []).append(rid)
            pending.append((i, version, context))
        if pending:
            self.keys.add_new_many(postings)
            failed = insert_new(self.current(resource_type), [version.stored for _, version, _ in pending])
            for j, (i, version, context) in enumerate(pending):
                if j in failed:
                    out[i] = conflict(f"{resource_type}/{version.stored['_id']} exists already; retry")
                    continue
                stored = Stored.from_doc(resource_type, version.clear)
                self.events.fire(StoreEvent("created", resource_type, stored.resource, context))
                out[i] = stored
        return [o if o is not None else conflict("not written") for o in out]

    def delete(self, resource_type: str, rid: str, *, if_match: int | None = None,
               context: WriteContext | None = None, cascade: bool = False) -> Stored | None:
        """Delete (idempotent: deleting a missing or deleted resource is not an error; returns None)."""
        self.check_type(resource_type)
        context = context or WriteContext()
        for _ in range(MAX_WRITE_RETRIES):
            prior = self.get_raw(resource_type, rid)
            if prior is None or prior.get("del"):
                return None
            if if_match is not None and prior["vid"] != if_match:
                raise precondition_failed(f"{resource_type}/{rid} is at version {prior['vid']}, not {if_match}")
            # judged before anything about its referrers is said or done
            self.admit(context, Change(resource_type, (self.decode(prior) or {}).get("res"), None, prior.get("prov")))
            referrers = self.referrers(resource_type, rid)
            if referrers and not cascade:
                sample = ", ".join(f"{t}/{i}" for t, i in referrers[:5])
                raise conflict(f"{resource_type}/{rid} is referenced by {len(referrers)} resource(s) ({sample}); "
                               "delete those first or use _cascade=delete")
            if referrers:
                # Every resource the cascade would delete passes the change gate before any is deleted.
                for t, _i, doc in self._cascade(referrers, {(resource_type, rid)}):
                    self.admit(context, Change(t, self.decode(doc).get("res"), None,  # type: ignore[union-attr]
                                               doc.get("prov")))
            for t, i in referrers:
                self.delete(t, i, context=context, cascade=True)
            try:
                stored = self._write(resource_type, rid, None, prior, context)
            except _VersionTaken:
                if if_match is not None:
                    raise precondition_failed(f"{resource_type}/{rid} was changed by another request") from None
                continue
            # Checked again after the tombstone: a resource created meanwhile that refers to this one passed its
            # check before the tombstone (`create` checks after its write) and is seen now.
            if self.referrers(resource_type, rid):
                self._revert(resource_type, rid, prior, stored.vid)
                if not cascade:
                    raise conflict(f"{resource_type}/{rid} is referenced by a resource written meanwhile; nothing "
                                   "was deleted: delete that first or use _cascade=delete")
                continue  # the cascade takes the newcomers too
            self.events.fire(StoreEvent("deleted", resource_type, None, context,
                                        previous=self.decode(prior).get("res"),  # type: ignore[union-attr]
                                        extra={"id": rid}))
            return stored
        raise conflict(f"{resource_type}/{rid} is being changed by many requests at once; retry")

    def _cascade(self, referrers: list[tuple[str, str]],
                 seen: set[tuple[str, str]]) -> list[tuple[str, str, dict[str, Any]]]:
        """Every live resource a cascading delete of these referrers reaches (raw documents)."""
        out: list[tuple[str, str, dict[str, Any]]] = []
        todo = list(referrers)
        while todo:
            t, i = todo.pop()
            if (t, i) in seen:
                continue
            seen.add((t, i))
            doc = self.get_raw(t, i)
            if doc is None or doc.get("del"):
                continue
            out.append((t, i, doc))
            todo.extend(self.referrers(t, i))
        return out

    def _write(self, resource_type: str, rid: str, resource: dict[str, Any] | None,
               prior: dict[str, Any] | None, context: WriteContext, registration: bool = False) -> Stored:
        """Make version prior.vid + 1 (a deletion when resource is None)."""
        now = utcnow()
        version = self.prepare_version(resource_type, rid, prior, resource, context, now, registration=registration)
        self.store_version(resource_type, prior, version.stored, now)
        return Stored.from_doc(resource_type, version.clear)

    # -- the change gate -------------------------------------------------------------------------------

    def prepare_version(self, resource_type: str, rid: str, prior: dict[str, Any] | None,
                        resource: dict[str, Any] | None, context: WriteContext, now: datetime, *,
                        registration: bool = False) -> Version:
        """Version prior.vid + 1, admitted by the change gate. Every write of a resource goes
        through here (single writes, cascades, merges, transaction entries): the one place a change is judged,
        with the version before and the version after. The record's home province is that of its first
        version: nobody's write moves it."""
        live = prior if prior is not None and not prior.get("del") else None
        # A write over a deletion is judged as a change of the last live version, not as a create: the record is
        # still its home province's, and still its patients' (a create's judgement would let anyone write it).
        judged = live if prior is None or live is not None else self.last_live(resource_type, prior)
        before = (self.decode(judged) or {}).get("res") if judged is not None else None
        province = (prior.get("prov") if prior else None) or context.province
        after = None if resource is None else {**resource, "resourceType": resource_type, "id": rid}
        self.admit(context, Change(resource_type, before, after, prior.get("prov") if prior else None,
                                   registration=registration and live is not None))
        vid = (prior["vid"] if prior else 0) + 1
        return self.build_version(resource_type, rid, vid, now, resource, province)

    def admit(self, context: WriteContext, change: Change) -> None:
        """Ask the change decision; 403 naming the reason when refused."""
        if self.decide_change is None:
            return
        decision = self.decide_change(context.principal, change)
        if not decision.allowed:
            err = forbidden(decision.reason)
            err.patients = sorted(decision.patients)
            raise err

    def store_version(self, resource_type: str, prior: dict[str, Any] | None, doc: dict[str, Any],
                      now: datetime) -> None:
        """Replace `prior` (None: nothing yet) by `doc`: claim the history slot, add the new posting-list
        keys, write the current document, drop the keys it no longer has. Raises _VersionTaken on a race."""
        rid = doc["_id"]
        codes = self._reference_codes.get(resource_type, ())
        if prior is not None:
            self._claim_slot(resource_type, rid, prior, now)
        new_keys = keys_for(resource_type, doc.get("ix", {}), codes)
        old_keys = keys_for(resource_type, prior.get("ix", {}), codes) if prior else set()
        self.keys.add(rid, new_keys - old_keys)
        if prior is None:
            try:
                self.current(resource_type).insert_one(doc)
            except DuplicateKeyError:
                raise _VersionTaken() from None
        else:
            self.current(resource_type).replace_one({"_id": rid}, doc)
        self.keys.remove(rid, old_keys - new_keys)

    def _claim_slot(self, resource_type: str, rid: str, prior: dict[str, Any], now: datetime) -> None:
        """Copy version n into history under its unique id: the serialisation point of n -> n+1.

        The slot names its claimer: this process's owner id (app.store.owners) and, inside a transaction, the
        journal. It is taken over only when its claimer can never move the resource on: the claimer's process
        is dead (heartbeat stale), no pending journal holds the slot, and the resource is still at version n;
        and then by exactly one writer (a unique takeover marker). A writer that merely stalls in a live
        process keeps its slot, so no other writer can make n+1 under it and lose its update."""
        owner = owner_for(self.db)
        owner.ensure_fresh()
        slot_id = f"{rid}/{prior['vid']}"
        hist: dict[str, Any] = {k: prior[k] for k in ("vid", "ts", "del", "res", "prov", "dec") if k in prior}
        hist.update({"_id": slot_id, "rid": rid, "at": now, "owner": owner.id})
        txid = owner.current_transaction()
        if txid:
            hist["txn"] = txid
        col = self.history_col(resource_type)
        try:
            col.insert_one(hist)
        except DuplicateKeyError:
            slot = col.find_one({"_id": slot_id}, {"owner": 1, "at": 1, "txn": 1})
            if slot is None:
                raise _VersionTaken() from None  # released meanwhile: re-read and retry
            claimer = slot.get("owner")
            if claimer is None:  # written before slots named their owner
                dead = now - slot.get("at", now) > STALE_SLOT
            else:
                dead = not owner.is_alive(claimer)
            if not dead or (slot.get("txn") and self.db["_journal"].find_one({"_id": slot["txn"]}, {"_id": 1})):
                raise _VersionTaken() from None  # a live writer's, or a pending journal's: it undoes it
            current = self.current(resource_type).find_one({"_id": rid}, {"vid": 1})
            if current is None or current["vid"] != prior["vid"]:
                raise _VersionTaken() from None  # the claimer did finish: version n is history now
            if not owner.take_over(f"{resource_type}/{slot_id}", claimer):
                raise _VersionTaken() from None  # another writer took it over
            update: dict[str, Any] = {"$set": {"at": now, "owner": owner.id}}
            if txid:
                update["$set"]["txn"] = txid
            else:
                update["$unset"] = {"txn": ""}
            if col.update_one({"_id": slot_id}, update).matched_count == 0:
                raise _VersionTaken() from None
        owner.note_claim(Claim(resource_type, slot_id, rid, prior["vid"]))
        fault_pause_after_claim(rid)

    def last_live(self, resource_type: str, tombstone: dict[str, Any]) -> dict[str, Any] | None:
        """The last version before a deletion (decoded, with the record's `_id` and home province), or None when
        no live version is left in the history."""
        rid = tombstone.get("_id")
        for vid in range(int(tombstone.get("vid") or 1) - 1, 0, -1):
            hist = self.decode(self.history_col(resource_type).find_one({"_id": f"{rid}/{vid}"}), owned=True)
            if hist is not None and not hist.get("del"):
                return {**hist, "_id": rid, "prov": hist.get("prov") or tombstone.get("prov")}
        return None

    def build_doc(self, resource_type: str, rid: str, vid: int, ts: datetime,
                  resource: dict[str, Any] | None, province: str) -> dict[str, Any]:
        """The stored document of a version (search index values computed, protected values encrypted)."""
        return self.build_version(resource_type, rid, vid, ts, resource, province).stored

    def build_version(self, resource_type: str, rid: str, vid: int, ts: datetime,
                      resource: dict[str, Any] | None, province: str) -> Version:
        doc: dict[str, Any] = {"_id": rid, "vid": vid, "ts": ts, "del": resource is None, "prov": province}
        if resource is not None:
            res = dict(resource)
            res["resourceType"] = resource_type
            res["id"] = rid
            meta = dict(res.get("meta") or {})
            meta["versionId"] = str(vid)
            meta["lastUpdated"] = to_instant(ts)
            res["meta"] = meta
            ix, so = extract_index(res, self.registry)
            doc.update({"res": res, "ix": ix, "so": so})
            shadow = decimal_shadow(res)
            if shadow:  # the database keeps doubles: the decimal texts ride beside them
                doc["dec"] = shadow
            if self.protector:  # encode copies what it encrypts: `doc` stays the clear form
                return Version(self.protector.encode(doc), doc)
        return Version(doc, doc)

    # -- references ------------------------------------------------------------------------------------

    def check_references(self, resource_type: str, resource: dict[str, Any],
                         pending: set[str] | None = None, prior: dict[str, Any] | None = None) -> None:
        """A reference to a resource of a supported type that does not exist is refused (422), and so is a new one
        to a Patient merged into another (its link `replaced-by`), except from Patient.link: a record written
        under the retired Patient would not follow the resident (the merge moved every record there was), so the
        answer names the Patient to refer to. A reference the version before (`prior`, stored) already held is
        not new: editing an older record that names a merged Patient stays possible."""
        for path, ref in iter_references(resource, resource_type):
            parts = split_reference(ref)
            problem = _names_nothing(resource_type, ref, parts, self.resource_types)
            if problem and not _holds(prior, resource_type, ref):
                raise unprocessable(f"{path} {problem}", expression=path)
            if not parts or parts[0] not in self.resource_types:
                continue
            target_type, target_id = parts
            if pending and f"{target_type}/{target_id}" in pending:
                continue
            doc = self.get_raw(target_type, target_id)  # nothing to decrypt: the link is stored in clear
            if doc is None or doc.get("del"):
                raise unprocessable(f"{path} refers to {target_type}/{target_id}, which does not exist",
                                    expression=path, code="not-found")
            into = replaced_by(doc.get("res")) if target_type == "Patient" else None
            if into and not path.startswith("Patient.link[") and not _holds(prior, resource_type, ref):
                raise unprocessable(f"{path} refers to Patient/{target_id}, which was merged into Patient/{into}: "
                                    f"refer to Patient/{into}", expression=path)

    def referrers(self, resource_type: str, rid: str) -> list[tuple[str, str]]:
        """Live resources that reference resource_type/rid (through the posting lists, re-checked)."""
        target = f"{resource_type}/{rid}"
        found: list[tuple[str, str]] = []
        # Only types that can point at this type (their reference parameters' targets) and that hold anything
        # at all (a collection exists once a type is first written; listing them is one command).
        existing = set(self.db.list_collection_names())
        for rtype in self._referring_types(resource_type):
            if rtype not in existing:
                continue
            for other in self.keys.lookup(reference_key(rtype, target)):
                if rtype == resource_type and other == rid:
                    continue
                doc = self.get_doc(rtype, other)
                if doc and not doc.get("del") and any(
                    target in doc.get("ix", {}).get(code, ()) for code in self._reference_codes[rtype]
                ):
                    found.append((rtype, other))
        return found

    def _referring_types(self, target_type: str) -> list[str]:
        found = self._referring.get(target_type)
        if found is None:
            found = self._referring[target_type] = sorted(
                t for t in self.resource_types - self.independent_types
                if any(p.type == "reference" and p.code in self._reference_codes.get(t, ())
                       and (not p.target or target_type in p.target) for p in self.registry.params(t).values()))
        return found

    # -- history ---------------------------------------------------------------------------------------

    def instance_history(self, resource_type: str, rid: str, since: datetime | None = None,
                         count: int = 50, below: int | None = None) -> list[Stored]:
        """Versions of one resource, newest first; `below`: only versions older than that versionId (paging)."""
        self.check_type(resource_type)
        doc = self.get_doc(resource_type, rid)
        if doc is None:
            raise not_found(f"{resource_type}/{rid} is not known")
        out = [Stored.from_doc(resource_type, doc)] if below is None or doc["vid"] < below else []
        col = self.history_col(resource_type)
        top = doc["vid"] - 1 if below is None else min(doc["vid"], below) - 1
        for vid in range(top, 0, -1):
            if len(out) >= count:
                break
            hist = self.decode(col.find_one({"_id": f"{rid}/{vid}"}), owned=True)
            if hist:
                out.append(Stored.from_doc(resource_type, hist))
        if since:
            out = [s for s in out if s.ts >= since]
        return out[:count]

    def type_history(self, resource_types: Iterable[str], since: datetime | None = None,
                     count: int = 50, until: datetime | None = None) -> list[Stored]:
        """Every version of every resource of these types, newest first (`until`: lastUpdated at most that,
        for paging). Types never written have no collection and cost nothing.

        At least `count` versions, and never part of a group that shares one lastUpdated (a transaction's versions
        all do): the database orders by lastUpdated alone, so a limit would keep an arbitrary part of such a group,
        and a reader paging by (lastUpdated, version, type, id) from the last version it showed would skip the
        rest for good."""
        flt: dict[str, Any] = {}
        if since or until:
            flt["ts"] = {k: v for k, v in (("$gte", since), ("$lte", until)) if v is not None}
        existing = set(self.db.list_collection_names())
        out: list[Stored] = []
        for rtype in resource_types:
            for col in (self.current(rtype), self.history_col(rtype)):
                if col.name not in existing:
                    continue
                fields = {"ix": 0, "so": 0}
                docs = list(col.find(flt, fields).sort([("ts", -1)]).limit(count + 1))
                if 0 < count < len(docs) and docs[count]["ts"] == docs[count - 1]["ts"]:  # the limit cut a group
                    edge = docs[count]["ts"]
                    docs = [d for d in docs if d["ts"] != edge] + list(col.find({**flt, "ts": edge}, fields))
                for doc in docs:
                    out.append(Stored.from_doc(rtype, self.decode(doc, owned=True)))  # type: ignore[arg-type]
        out.sort(key=lambda s: (s.ts, s.vid, s.resource_type, s.id), reverse=True)
        cut = min(count, len(out))
        while 0 < cut < len(out) and out[cut].ts == out[cut - 1].ts:
            cut += 1
        return out[:cut]


def index_plan(registry: SearchRegistry, rtype: str) -> list[IndexModel]:
    """The MongoDB indexes of one type's collection, at most INDEXES_PER_TYPE (Repository.ensure_indexes)."""
    params = [(c, p) for c, p in registry.params(rtype).items() if c != "_id"]

    def rank(item: tuple[str, Any]) -> tuple[int, str]:
        code, param = item
        if code in PREFERRED_INDEXES:
            return PREFERRED_INDEXES.index(code), code
        return (len(PREFERRED_INDEXES) + (0 if param.type == "reference" else 1)), code

    models = [IndexModel([("ts", -1)], name="ts")]
    for code, param in sorted(params, key=rank):
        suffix = {"date": ".lo", "quantity": ".v"}.get(param.type, "")
        models.append(IndexModel([(f"ix.{code}{suffix}", 1)], name=f"ix_{code}", sparse=True))
        if param.type == "date":
            models.append(IndexModel([(f"so.{code}", 1), ("_id", 1)], name=f"so_{code}", sparse=True))
    return models[:INDEXES_PER_TYPE]


def same_content(stored: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a write would store what is there already (meta.versionId and lastUpdated aside). Values compare
    as JSON does, not as Python numbers do: a decimal by its text (R4: 0.10 and 0.1 differ in precision), and
    `true` is not `1`. When in doubt it says no: the write then makes a version, as every write did before."""
    def strip(res: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in res.items() if k != "meta"}
        meta = {k: v for k, v in (res.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        if meta:
            out["meta"] = meta
        return out

    return bool(_as_json(strip(stored)) == _as_json(strip(new)))


def _as_json(node: Any) -> Any:
    """`node` with every number and boolean tagged with its JSON kind (a decimal with its text), for comparing."""
    if isinstance(node, dict):
        return {k: _as_json(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_as_json(v) for v in node]
    if isinstance(node, FhirDecimal):
        return ("decimal", node.text)
    if isinstance(node, bool | int | float):
        return (type(node).__name__, node)
    return node


class _VersionTaken(Exception):
    """Another writer took the version this one wanted."""


_CONDITIONAL = re.compile(r"^[A-Z][A-Za-z]*\?")


def _names_nothing(resource_type: str, ref: str, parts: tuple[str, str] | None,
                   resource_types: set[str]) -> str | None:
    """Why a reference can never resolve, or None: a conditional reference, or a `urn:uuid:` (both name something
    only within a transaction, which resolves them before this check), or a type that is no resource type. A
    stored Bundle (a document) holds references between its own entries, and is left alone."""
    if resource_type == "Bundle":
        return None
    if ref.startswith("urn:uuid:"):
        return f"is {ref!r}: a urn:uuid names an entry of the same transaction Bundle, and here there is none"
    if _CONDITIONAL.match(ref):
        return f"is the conditional reference {ref!r}: one is resolved only in a transaction (http.html#trules)"
    if parts is not None and parts[0] not in resource_types:
        return f"refers to {parts[0]}/{parts[1]}, but {parts[0]} is no resource type of this server"
    return None


def _holds(prior: dict[str, Any] | None, resource_type: str, ref: str) -> bool:
    """Whether the stored version before held this reference (walked only when a reference needs it: rarely)."""
    return any(r == ref for _, r in iter_references((prior or {}).get("res") or {}, resource_type))


def iter_references(node: Any, path: str, contained: bool = False) -> Iterable[tuple[str, str]]:
    """(FHIRPath-ish path, reference string) for every Reference.reference in a resource; those of its contained
    resources too when `contained` (a transaction rewrites and resolves them as well)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield f"{path}.reference", value
            elif contained or key != "contained":
                yield from iter_references(value, f"{path}.{key}", contained)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from iter_references(item, f"{path}[{i}]", contained)
