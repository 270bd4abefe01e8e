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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from app.core.errors import FhirError, conflict, gone, not_found, precondition_failed, unprocessable
from app.core.fhirjson import decimal_shadow, restore_decimals
from app.core.ids import is_valid_id, new_id, split_reference
from app.core.timeutil import to_instant, utcnow
from app.search.extract import extract_index
from app.search.registry import SearchRegistry
from app.store.database import DatabaseHandle
from app.store.events import EventBus, StoreEvent
from app.store.keys import KeyIndex, keys_for, reference_key
from app.store.protect import FieldProtector

# A history slot older than this whose current document never moved on belongs to a writer that died.
STALE_SLOT = timedelta(seconds=5)
MAX_WRITE_RETRIES = 20


@dataclass
class WriteContext:
    """Who writes: recorded with each version (province) and passed to event handlers."""

    province: str = "00"
    client_id: str | None = None
    organization: str | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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

    @classmethod
    def from_doc(cls, resource_type: str, doc: dict[str, Any]) -> Stored:
        rid = doc.get("rid") or doc["_id"]
        return cls(resource_type, rid, doc["vid"], doc["ts"], doc.get("del", False), doc.get("res"), doc.get("prov"))


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
        """Secondary indexes for every search parameter, where the server uses them (MongoDB, not FerretDB v1)."""
        if not self.handle.supports_secondary_indexes:
            return
        for rtype in sorted(self.resource_types):
            col = self.current(rtype)
            for code, param in self.registry.params(rtype).items():
                if code == "_id":
                    continue
                suffix = {"date": ".lo", "quantity": ".v"}.get(param.type, "")
                field_path = f"ix.{code}{suffix}"
                col.create_index([(field_path, 1)], name=f"ix_{code}", sparse=True)
                col.create_index([(f"so.{code}", 1), ("_id", 1)], name=f"so_{code}", sparse=True)
            self.history_col(rtype).create_index([("ts", -1)], name="ts")
            col.create_index([("ts", -1)], name="ts")

    # -- reads ---------------------------------------------------------------------------------------

    def get_raw(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        """The stored document as it is in the database (protected values encrypted): for writers."""
        if not is_valid_id(rid):
            return None
        return self.current(resource_type).find_one({"_id": rid})

    def get_doc(self, resource_type: str, rid: str) -> dict[str, Any] | None:
        """The stored document with protected values decrypted: for readers."""
        return self.decode(self.get_raw(resource_type, rid))

    def decode(self, doc: dict[str, Any] | None) -> dict[str, Any] | None:
        if doc and doc.get("dec") and doc.get("res"):
            restore_decimals(doc["res"], doc["dec"])  # the exact decimal texts the doubles lost
        return self.protector.decode(doc) if self.protector and doc else doc

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

    def vread(self, resource_type: str, rid: str, vid: str) -> Stored:
        self.check_type(resource_type)
        if not vid.isdigit():
            raise not_found(f"version {vid!r} of {resource_type}/{rid} is not known")
        doc = self.get_doc(resource_type, rid)
        if doc is None:
            raise not_found(f"{resource_type}/{rid} is not known")
        if doc["vid"] == int(vid):
            stored = Stored.from_doc(resource_type, doc)
        else:
            hist = self.decode(self.history_col(resource_type).find_one({"_id": f"{rid}/{int(vid)}"}))
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
            return self.update(resource_type, existing_id, resource, context=context, fire_pre=False)
        rid = rid or new_id()
        self.check_references(resource_type, resource)
        stored = self._write(resource_type, rid, resource, None, context)
        self.events.fire(StoreEvent("created", resource_type, stored.resource, context))
        return stored

    def update(self, resource_type: str, rid: str, resource: dict[str, Any], *, if_match: int | None = None,
               context: WriteContext | None = None, fire_pre: bool = True,
               on_conflict_retry: bool = True) -> Stored:
        """Update (or create with a client-chosen id). Returns the new version; .vid == 1 means created."""
        self.check_type(resource_type)
        if not is_valid_id(rid):
            raise FhirError(400, f"{rid!r} is not a valid FHIR id", expression="id")
        context = context or WriteContext()
        resource = copy.deepcopy(resource)
        resource["resourceType"] = resource_type
        resource["id"] = rid
        if fire_pre:
            self.events.fire(StoreEvent("pre-update", resource_type, resource, context))
        self.check_references(resource_type, resource)
        for _ in range(MAX_WRITE_RETRIES):
            prior = self.get_raw(resource_type, rid)
            if if_match is not None:
                if prior is None:
                    raise precondition_failed(f"{resource_type}/{rid} does not exist (If-Match {if_match})")
                if prior["vid"] != if_match:
                    raise precondition_failed(
                        f"{resource_type}/{rid} is at version {prior['vid']}, not {if_match} (If-Match)")
            resource.pop("_ehc_existing", None)
            try:
                stored = self._write(resource_type, rid, resource, prior, context)
            except _VersionTaken:
                if if_match is not None or not on_conflict_retry:
                    raise precondition_failed(
                        f"{resource_type}/{rid} was changed by another request; re-read and retry") from None
                continue
            event = "created" if prior is None else "updated"
            previous = self.decode(prior).get("res") if prior else None  # type: ignore[union-attr]
            self.events.fire(StoreEvent(event, resource_type, stored.resource, context, previous=previous))
            return stored
        raise conflict(f"{resource_type}/{rid} is being changed by many requests at once; retry")

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
            referrers = self.referrers(resource_type, rid)
            if referrers and not cascade:
                sample = ", ".join(f"{t}/{i}" for t, i in referrers[:5])
                raise conflict(f"{resource_type}/{rid} is referenced by {len(referrers)} resource(s) ({sample}); "
                               "delete those first or use _cascade=delete")
            for t, i in referrers:
                self.delete(t, i, context=context, cascade=True)
            try:
                stored = self._write(resource_type, rid, None, prior, context)
            except _VersionTaken:
                if if_match is not None:
                    raise precondition_failed(f"{resource_type}/{rid} was changed by another request") from None
                continue
            self.events.fire(StoreEvent("deleted", resource_type, None, context,
                                        previous=self.decode(prior).get("res"),  # type: ignore[union-attr]
                                        extra={"id": rid}))
            return stored
        raise conflict(f"{resource_type}/{rid} is being changed by many requests at once; retry")

    def _write(self, resource_type: str, rid: str, resource: dict[str, Any] | None,
               prior: dict[str, Any] | None, context: WriteContext) -> Stored:
        """Make version prior.vid + 1 (a deletion when resource is None)."""
        now = utcnow()
        vid = (prior["vid"] if prior else 0) + 1
        doc = self.build_doc(resource_type, rid, vid, now, resource, context.province)
        self.store_version(resource_type, prior, doc, now)
        return Stored.from_doc(resource_type, self.decode(doc))  # type: ignore[arg-type]

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
        """Copy version n into history under its unique id: the serialisation point of n -> n+1."""
        hist: dict[str, Any] = {k: prior[k] for k in ("vid", "ts", "del", "res", "prov", "dec") if k in prior}
        hist.update({"_id": f"{rid}/{prior['vid']}", "rid": rid, "at": now})
        col = self.history_col(resource_type)
        try:
            col.insert_one(hist)
        except DuplicateKeyError:
            slot = col.find_one({"_id": hist["_id"]})
            if slot and now - slot.get("at", now) > STALE_SLOT:
                # The writer that claimed it died before moving the current document on: the slot
                # holds exactly version n, so reuse it.
                col.update_one({"_id": hist["_id"]}, {"$set": {"at": now}})
                return
            raise _VersionTaken() from None

    def build_doc(self, resource_type: str, rid: str, vid: int, ts: datetime,
                  resource: dict[str, Any] | None, province: str) -> dict[str, Any]:
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
            if self.protector:
                doc = self.protector.encode(doc)
        return doc

    # -- references ------------------------------------------------------------------------------------

    def check_references(self, resource_type: str, resource: dict[str, Any],
                         pending: set[str] | None = None) -> None:
        """A reference to a resource of a supported type that does not exist is refused (422)."""
        for path, ref in iter_references(resource, resource_type):
            parts = split_reference(ref)
            if not parts:
                continue
            target_type, target_id = parts
            if target_type not in self.resource_types:
                continue
            if pending and f"{target_type}/{target_id}" in pending:
                continue
            if not self.exists(target_type, target_id):
                raise unprocessable(f"{path} refers to {target_type}/{target_id}, which does not exist",
                                    expression=path, code="not-found")

    def referrers(self, resource_type: str, rid: str) -> list[tuple[str, str]]:
        """Live resources that reference resource_type/rid (through the posting lists, re-checked)."""
        target = f"{resource_type}/{rid}"
        found: list[tuple[str, str]] = []
        for rtype in sorted(self.resource_types - self.independent_types):
            for other in self.keys.lookup(reference_key(rtype, target)):
                if rtype == resource_type and other == rid:
                    continue
                doc = self.get_doc(rtype, other)
                if doc and not doc.get("del") and any(
                    target in doc.get("ix", {}).get(code, ()) for code in self._reference_codes[rtype]
                ):
                    found.append((rtype, other))
        return found

    # -- history ---------------------------------------------------------------------------------------

    def instance_history(self, resource_type: str, rid: str, since: datetime | None = None,
                         count: int = 50) -> list[Stored]:
        self.check_type(resource_type)
        doc = self.get_doc(resource_type, rid)
        if doc is None:
            raise not_found(f"{resource_type}/{rid} is not known")
        out = [Stored.from_doc(resource_type, doc)]
        col = self.history_col(resource_type)
        for vid in range(doc["vid"] - 1, 0, -1):
            if len(out) >= count:
                break
            hist = self.decode(col.find_one({"_id": f"{rid}/{vid}"}))
            if hist:
                out.append(Stored.from_doc(resource_type, hist))
        if since:
            out = [s for s in out if s.ts >= since]
        return out[:count]

    def type_history(self, resource_types: Iterable[str], since: datetime | None = None,
                     count: int = 50) -> list[Stored]:
        """Every version of every resource of these types, newest first."""
        flt: dict[str, Any] = {"ts": {"$gte": since}} if since else {}
        out: list[Stored] = []
        for rtype in resource_types:
            for col in (self.current(rtype), self.history_col(rtype)):
                for doc in col.find(flt, {"ix": 0, "so": 0}).sort([("ts", -1)]).limit(count):
                    out.append(Stored.from_doc(rtype, self.decode(doc)))  # type: ignore[arg-type]
        out.sort(key=lambda s: (s.ts, s.vid), reverse=True)
        return out[:count]


class _VersionTaken(Exception):
    """Another writer took the version this one wanted."""


def iter_references(node: Any, path: str) -> Iterable[tuple[str, str]]:
    """(FHIRPath-ish path, reference string) for every Reference.reference in a resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield f"{path}.reference", value
            elif key not in ("contained",):
                yield from iter_references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from iter_references(item, f"{path}[{i}]")
