"""Cards of a Patient: which identifiers make the card, and the card status store.

On every Patient write `assign_card` leaves exactly one current card identifier on the resource:

    {"use": "official", "system": "urn:oid:2.16.156.10011.1.19", "value": "<64 hex>",
     "type": {"coding": [{"system": CARD_TYPE_SYSTEM, "code": "formal" | "temporary", "display": ...}]}}

- a resident with a master document (resident ID card first, then the other documents in the order the
  identifier registry gives) gets a formal card (正式卡) derived from that document, and the master index ID
  (主索引ID) as the identifier {"system": MASTER_INDEX_SYSTEM, "value": "<64 hex>"};
- a resident without one gets a temporary card (临时卡), random; when a document is added, or a record with one
  is merged in, a formal card is issued and the temporary one is kept as an identifier with use "old"
  (so old references still find the resident) and cancelled in the card store;
- a formal card, once issued, stays (adding a second document later does not change the card ID), except when
  the resident ID number it was derived from is corrected: that number is someone else's, so its card is
  retired and cancelled (codes shown with it stop verifying) and a card is derived from the right number;
- a document whose derived card is cancelled gets a reissued card (card_id.reissued_card), never the cancelled one;
- after a merge the target keeps its card; the source's formal card stays valid and points to the target.

CardStore: collection `ehc_cards`, `_id` = card ID, {patient, status active|suspended|cancelled, kind, at};
collection `ehc_revocations` mirrors the suspended and cancelled cards (small, read whole by terminals and by
`$ehc-verify`: what decides whether a card is accepted). A status change holds the card's lease (across
processes), so that cancelled stays final and the two collections agree however many changes race; it writes
the revocation list on the refusing side first (listed before the record says suspended, delisted after it
says active), so that a process killed between the two writes leaves a card refused, never one accepted.
The one-time use of dynamic tokens: app/ehc/nonces.py.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database

from app.core.errors import FhirError, conflict
from app.core.timeutil import to_instant, utcnow
from app.ehc.card_id import derive_card, reissued_card, temporary_card
from app.store.database import insert_new
from app.store.leases import Leases

EHC_SYSTEM = "urn:oid:2.16.156.10011.1.19"
MASTER_INDEX_SYSTEM = "urn:ehc:id:master-index"
CARD_TYPE_SYSTEM = "https://ehc.example.cn/fhir/CodeSystem/card-type"
CARD_KINDS = {"formal": "正式卡 formal card", "temporary": "临时卡 temporary card"}
STATUSES = ("active", "suspended", "cancelled")
CardOp = tuple[str, dict[str, Any], dict[str, Any]]  # card id, $set, $setOnInsert of its record's upsert

def card_kind(ident: dict[str, Any]) -> str:
    for coding in (ident.get("type") or {}).get("coding") or []:
        if coding.get("system") == CARD_TYPE_SYSTEM and coding.get("code") in CARD_KINDS:
            return str(coding["code"])
    return "formal"


def card_identifier(card_id: str, kind: str) -> dict[str, Any]:
    return {"use": "official",
            "type": {"coding": [{"system": CARD_TYPE_SYSTEM, "code": kind, "display": CARD_KINDS[kind]}]},
            "system": EHC_SYSTEM, "value": card_id}


def is_current(ident: Any, system: str) -> bool:
    return isinstance(ident, dict) and ident.get("system") == system and ident.get("use") != "old"


def current_card(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    for ident in (resource or {}).get("identifier") or []:
        if is_current(ident, EHC_SYSTEM):
            return ident
    return None


def _retire(ident: dict[str, Any], now: str) -> None:
    ident["use"] = "old"
    ident["period"] = {**(ident.get("period") or {}), "end": now}


def assign_card(resource: dict[str, Any], master_document: tuple[str, str] | None, index_key: bytes,
                root_key: bytes, *, reissue: bool = False, usable: Callable[[str], bool] = lambda card: True) -> None:
    """Leave exactly one current card (and, for a formal card, its master index ID) on the Patient, in place.

    master_document: (document code, normalised number) of the resident's first master document, if any.
    reissue: the document of the current formal card was corrected; retire it and derive the card anew.
    usable: whether a card ID may be given (False for a cancelled one).
    """
    idents: list[Any] = resource.setdefault("identifier", [])
    now = to_instant(utcnow())
    cards = [i for i in idents if is_current(i, EHC_SYSTEM)]
    formal = [i for i in cards if card_kind(i) == "formal"]
    temporary = [i for i in cards if card_kind(i) == "temporary"]
    keep: dict[str, Any] | None = None
    if reissue and master_document is not None:
        for ident in [i for i in idents if is_current(i, MASTER_INDEX_SYSTEM)]:
            _retire(ident, now)  # the master index ID of the wrong number goes with its card
        formal = []
    if formal:
        keep = formal[0]
    elif master_document is not None:
        card = derive_card(root_key, index_key, *master_document)
        if not usable(card.card_id):
            card = reissued_card(root_key, card)
        keep = next((i for i in idents if isinstance(i, dict) and i.get("system") == EHC_SYSTEM
                     and i.get("value") == card.card_id), None)
        if keep is None:
            keep = card_identifier(card.card_id, "formal")
            idents.append(keep)
        else:  # the formal card of this document was retired before (e.g. by a merge): current again
            keep.pop("use", None)
            keep.pop("period", None)
            keep["use"] = "official"
        mid = card.master_index_id.hex().upper()
        if not any(isinstance(i, dict) and i.get("system") == MASTER_INDEX_SYSTEM and i.get("value") == mid
                   for i in idents):
            idents.append({"system": MASTER_INDEX_SYSTEM, "value": mid})
    elif temporary:
        keep = temporary[0]
    else:
        card = temporary_card(root_key)
        keep = card_identifier(card.card_id, "temporary")
        idents.append(keep)
    for ident in cards:
        if ident is not keep:
            _retire(ident, now)
    # One current master index ID: the one of the kept card's document (the first listed when unknown).
    mids = [i for i in idents if is_current(i, MASTER_INDEX_SYSTEM)]
    for ident in mids[1:]:
        _retire(ident, now)


class CardStore:
    """Card records, with two per-process caches for the hot paths ($ehc-verify, $ehc-qrcode):
    the set of revoked cards (re-read whole every `refresh` seconds; small) and card -> patient
    (bounded, entries kept `patient_ttl` seconds: a merge re-points cards rarely)."""

    def __init__(self, db: Database, leases: Leases, refresh: float = 1.0, patient_ttl: float = 60.0,
                 cache_size: int = 100_000) -> None:
        self.leases = leases
        self.col: Collection = db["ehc_cards"]
        self.revoked: Collection = db["ehc_revocations"]
        self.refresh = refresh
        self.patient_ttl = patient_ttl
        self.cache_size = cache_size
        self._revoked: dict[str, str] = {}
        self._revoked_at = 0.0
        self._patients: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()

    def get(self, card_id: str) -> dict[str, Any] | None:
        return self.col.find_one({"_id": card_id})

    def status(self, card_id: str) -> str:
        """active | suspended | cancelled, as of at most `refresh` seconds ago (exact in this process)."""
        now = time.monotonic()
        if now - self._revoked_at > self.refresh:
            revoked = {d["_id"]: d["status"] for d in self.revoked.find({}, {"status": 1})}
            with self._lock:
                self._revoked, self._revoked_at = revoked, now
        return self._revoked.get(card_id, "active")

    def patient_of(self, card_id: str) -> str | None:
        now = time.monotonic()
        hit = self._patients.get(card_id)
        if hit is not None and now - hit[0] < self.patient_ttl:
            return hit[1]
        doc = self.col.find_one({"_id": card_id}, {"patient": 1})
        if doc is None or not doc.get("patient"):
            return None
        with self._lock:
            self._patients[card_id] = (now, doc["patient"])
            self._patients.move_to_end(card_id)
            while len(self._patients) > self.cache_size:
                self._patients.popitem(last=False)
        return str(doc["patient"])

    def sync(self, patient_id: str, resource: dict[str, Any] | None, previous: dict[str, Any] | None,
             cancel_retired: bool = True) -> None:
        """Record the cards of a Patient version: current and merged-in cards point to it; a temporary card
        that a formal card replaced, and a formal card this Patient held and no longer holds (its ID number was
        corrected: `retired_formal`), are cancelled; the latter only released when not `cancel_retired` (a
        province node: the national node decides, as for a deletion)."""
        now = utcnow()
        ops: list[CardOp] = []
        before = _card_states(previous)
        retired = retired_formal(resource, previous)
        for card_id, (kind, current) in _card_states(resource).items():
            if before.get(card_id) == (kind, current):
                continue  # unchanged since the previous version of this Patient
            if card_id in retired and not cancel_retired:
                self.release_card(card_id)
                continue
            if (kind == "temporary" and not current) or card_id in retired:
                self._change(card_id, "cancelled", f"replaced by card {_current_value(resource)}", patient_id,
                             kind)
                continue
            ops.append((card_id, {"patient": patient_id, "at": now},
                        {"status": "active", "kind": kind, "since": now}))
        if not ops:
            return
        batch = getattr(self._local, "batch", None)
        if batch is not None:  # inside batched(): written with the batch
            batch.extend(ops)
            return
        self.col.bulk_write([_upsert(op) for op in ops], ordered=False)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Within this block, this thread's `sync` of new card records is written when the block ends, for
        all of them at once (the bulk import's batch of new residents): one insert_many of the records (what
        the upserts of cards nobody has recorded give), then the upserts of those that exist, in chunks.
        Nothing is written when the block raises (the Patients are written; a card without its record is
        still found by its identifier, as after a process killed between the two)."""
        ops: list[CardOp] = []
        self._local.batch = ops
        try:
            yield
        finally:
            self._local.batch = None
        self.write_card_ops(ops)

    def write_card_ops(self, ops: list[CardOp]) -> None:
        docs = [{"_id": card_id, **on_set, **on_insert} for card_id, on_set, on_insert in ops]
        if not docs:
            return
        again = [_upsert(ops[i]) for i in sorted(insert_new(self.col, docs))]
        for i in range(0, len(again), 50):  # FerretDB v1 stalls on larger bulks of updates
            self.col.bulk_write(again[i: i + 50], ordered=False)

    def cancel_all(self, resource: dict[str, Any] | None, reason: str) -> None:
        for card_id, (kind, _current) in _card_states(resource).items():
            doc = self.get(card_id)
            if doc is not None:
                self._change(card_id, "cancelled", reason, doc.get("patient"), kind)

    def release(self, resource: dict[str, Any] | None) -> None:
        """The Patient's cards no longer point to it (it was deleted), without a status change: at a province
        node, the national node decides whether another node still holds the resident (then the card stays
        valid) or it is cancelled."""
        for card_id in _card_states(resource):
            self.release_card(card_id)

    def release_card(self, card_id: str) -> None:
        self.col.update_one({"_id": card_id}, {"$unset": {"patient": ""}})
        with self._lock:
            self._patients.pop(card_id, None)

    def set_status(self, card_id: str, status: str, patient_id: str | None,
                   reason: str | None = None) -> dict[str, Any]:
        """Change a card's status; cancelled is final (409 on any change from it)."""
        if status not in STATUSES:
            raise FhirError(400, f"status must be one of {', '.join(STATUSES)}", expression="status")
        return self._change(card_id, status, reason, patient_id, None)

    def _change(self, card_id: str, status: str, reason: str | None, patient_id: Any,
                kind: str | None) -> dict[str, Any]:
        """The one place a card's status changes (the module docstring says why it holds the card's lease and
        in which order it writes). Cancelled is final: 409 for any other status, nothing for cancelled again."""
        with self.leases.hold("card|" + card_id):
            doc = self.get(card_id) or {"status": "active", "kind": "formal"}
            listed = self.revoked.find_one({"_id": card_id}, {"status": 1})
            if "cancelled" in (doc.get("status"), (listed or {}).get("status")):
                if status != "cancelled":
                    raise conflict(f"card {card_id} is cancelled (注销); a cancelled card cannot change status",
                                   expression="status")
                return {"_id": card_id, **doc, "status": "cancelled"}
            now = utcnow()
            new = {"patient": patient_id, "status": status, "kind": kind or doc.get("kind", "formal"),
                   "since": now, "at": now, "reason": reason}
            try:
                if status != "active":
                    self.revoked.replace_one({"_id": card_id}, {"status": status, "since": now}, upsert=True)
                self.col.update_one({"_id": card_id}, {"$set": new}, upsert=True)
                if status == "active":
                    self.revoked.delete_one({"_id": card_id})
            finally:  # also after a failed write: this process sees at once what was written
                self._revoked_at = 0.0  # (the others within `refresh`)
        return {"_id": card_id, **new}

    def revocations(self) -> list[dict[str, Any]]:
        return [{"ehcId": d["_id"], "status": d["status"], "since": to_instant(d["since"])}
                for d in self.revoked.find({}).sort([("_id", 1)])]


def _upsert(op: CardOp) -> UpdateOne:
    card_id, on_set, on_insert = op
    return UpdateOne({"_id": card_id}, {"$set": on_set, "$setOnInsert": on_insert}, upsert=True)


def retired_formal(resource: dict[str, Any] | None, previous: dict[str, Any] | None) -> set[str]:
    """Formal cards the Patient held as current before this version and holds as old in it (a corrected ID
    number; a merge does not: the source's cards are new to the target)."""
    before, after = _card_states(previous), _card_states(resource)
    return {card for card, (kind, current) in after.items()
            if kind == "formal" and not current and before.get(card) == ("formal", True)}


def _current_value(resource: dict[str, Any] | None) -> str | None:
    card = current_card(resource)
    return None if card is None else str(card.get("value"))


def _card_states(resource: dict[str, Any] | None) -> dict[str, tuple[str, bool]]:
    out = {}
    for ident in (resource or {}).get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == EHC_SYSTEM and isinstance(ident.get("value"), str):
            out[ident["value"]] = (card_kind(ident), ident.get("use") != "old")
    return out
