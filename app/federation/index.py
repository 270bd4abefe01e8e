"""The national cross-domain index: one resident, one card, the node Patients that hold them.

Collection `fed_index`, `_id` = blind index of the resident ID number (SM3-HMAC under the national node's
blind-index key; the number itself is never stored) -> {card: the card ID, home: the province that
registered the resident first, refs: [{province, ref: absolute URL of that node's Patient}], at}.
Collection `fed_cards`, `_id` = card ID -> {blind}: the resident of a card (for QR codes verified at a node that
does not know the resident); for a card of a resident without an ID number (a temporary card, a card derived
from a passport or permit) -> {home, refs}: such a card is one node's, known by its ID alone. Nothing clinical,
no name, no clear ID number.

Withdrawal (a node Patient deleted, or its card replaced): the node's ref is pulled. `claimed` lists the provinces
that claimed the card (a claim comes before the node's index entry, which its outbox delivers later), and a
province leaves it with its last ref. When no province holds the card any more, the entry is removed (the ID
number is free for a fresh claim) and the caller cancels the card: while one node still holds the resident, a
deletion at another cancels nothing.

The first claim wins: two nodes registering one resident at the same moment both get the card of the one whose
insert landed first (a unique _id; the loser reads the winner's). A card already bound to another resident is
refused (409): one card is never two residents'. Adding a node Patient is an $addToSet, so a
queue that delivers an entry twice changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from app.core.errors import conflict
from app.keyring import Keyring

ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
EHC_SYSTEM = "urn:oid:2.16.156.10011.1.19"


def _empty(field: str) -> dict[str, Any]:
    """Filter: the array is empty or absent (entries written before `claimed` existed have none)."""
    return {f"{field}.0": {"$exists": False}}


def normalise_id(number: str) -> str:
    return number.strip().upper()


class NationalIndex:
    def __init__(self, db: Database, keyring: Keyring) -> None:
        self.entries = db["fed_index"]
        self.cards = db["fed_cards"]
        self.keyring = keyring

    def blind(self, id_number: str) -> str:
        return self.keyring.blind(f"{ID_SYSTEM}|{normalise_id(id_number)}")

    def claim(self, id_number: str, card: str, province: str) -> str:
        """The resident's nationwide card: the one already known, else `card` (now known)."""
        key = self.blind(id_number)
        doc = self.entries.find_one({"_id": key}, {"card": 1, "claimed": 1})
        if doc is None:
            holder = self.cards.find_one({"_id": card}, {"blind": 1, "home": 1})
            # a card known by its ID alone becomes this resident's when its node adds their ID number
            own_card = holder is not None and not holder.get("blind") and holder.get("home") == province
            if holder is not None and holder.get("blind") != key and not own_card:
                raise conflict(f"card {card} is already the card of another resident in the national index",
                               expression="card")
            try:
                self.entries.insert_one({"_id": key, "card": card, "home": province, "refs": [],
                                         "claimed": [province], "at": datetime.now(UTC).replace(tzinfo=None)})
                doc = {"card": card, "claimed": [province]}
            except DuplicateKeyError:  # another node's registration of the same resident landed first
                doc = self.entries.find_one({"_id": key}, {"card": 1, "claimed": 1}) or {"card": card}
        if province not in (doc.get("claimed") or []):
            self.entries.update_one({"_id": key}, {"$addToSet": {"claimed": province}})
        canonical = str(doc["card"])
        self.cards.update_one({"_id": canonical}, {"$set": {"blind": key}, "$unset": {"home": "", "refs": ""}},
                              upsert=True)
        return canonical

    def add(self, id_number: str, card: str, province: str, ref: str) -> str:
        canonical = self.claim(id_number, card, province)
        self.entries.update_one({"_id": self.blind(id_number)},
                                {"$addToSet": {"refs": {"province": province, "ref": ref}}})
        return canonical

    def add_card(self, card: str, province: str, ref: str) -> str:
        """Index the card of a resident without an ID number: one province's, known by its ID alone."""
        link = self.cards.find_one({"_id": card})
        if link is not None and (link.get("blind") or link.get("home") != province):
            raise conflict(f"card {card} is already another node's or another resident's in the national index",
                           expression="card")
        self.cards.update_one({"_id": card}, {"$setOnInsert": {"home": province},
                                              "$addToSet": {"refs": {"province": province, "ref": ref}}}, upsert=True)
        return card

    def withdraw(self, card: str, province: str, ref: str, still_held: bool = False) -> tuple[str, bool]:
        """Province `province` no longer holds `ref` with this card; `still_held`: another of its Patients does
        (a resident deleted and registered again). Returns (outcome, indexed): "held", another node (or this
        province, still) holds it; "released", it was the last holder (the entry is gone; the caller cancels the
        card); "unknown", not this province's to let go (nothing changed). indexed: the index knows the card.
        Idempotent: delivered again, a withdrawal finds nothing of the province's left and answers "held" while
        another node holds the card."""
        link = self.cards.find_one({"_id": card})
        if link is None:
            return "unknown", False
        gone = {"$pull": {"refs": {"province": province, "ref": ref}}}
        if not link.get("blind"):
            if link.get("home") != province:
                return "unknown", True
            after = self.cards.find_one_and_update({"_id": card}, gone, return_document=ReturnDocument.AFTER)
            if after is None:
                return "unknown", False
            if still_held or after.get("refs"):
                return "held", True
            return ("released" if self.cards.delete_one({"_id": card, **_empty("refs")}).deleted_count
                    else "held"), True
        key = link["blind"]
        entry = self.entries.find_one_and_update({"_id": key, "card": card}, gone,
                                                 return_document=ReturnDocument.AFTER)
        if entry is None:
            return "unknown", False  # its entry was released (or holds another card): not this card's any more
        claimed = list(entry.get("claimed") or [])
        if still_held:
            if province not in claimed:
                self.entries.update_one({"_id": key}, {"$addToSet": {"claimed": province}})
            return "held", True
        if province in claimed and not any(r.get("province") == province for r in entry.get("refs") or []):
            self.entries.update_one({"_id": key}, {"$pull": {"claimed": province}})
            claimed.remove(province)
        if entry.get("refs") or claimed:
            return "held", True
        if self.entries.delete_one({"_id": key, **_empty("refs"), **_empty("claimed")}).deleted_count:
            self.cards.delete_one({"_id": card})
            return "released", True
        return "held", True  # a node claimed or indexed the resident meanwhile

    def held_by(self, card: str, province: str) -> bool:
        """Whether `province` may revoke the card for every node: it holds the card as the index says (home, a ref,
        a claim), or the index does not know the card (a card of that node alone)."""
        link = self.cards.find_one({"_id": card})
        if link is None:
            return True
        if not link.get("blind"):
            return bool(link.get("home") == province)
        entry = self.entries.find_one({"_id": link["blind"]})
        if entry is None:
            return True
        return province in {entry.get("home"), *(entry.get("claimed") or []),
                            *(r.get("province") for r in entry.get("refs") or [])}

    def find(self, id_number: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self.entries.find_one({"_id": self.blind(id_number)})
        return doc

    def by_card(self, card: str) -> dict[str, Any] | None:
        link = self.cards.find_one({"_id": card})
        if link is None:
            return None
        if not link.get("blind"):
            refs = link.get("refs") or []
            return {"card": card, "home": link.get("home"), "refs": refs} if refs else None
        found: dict[str, Any] | None = self.entries.find_one({"_id": link["blind"]})
        return found if found and found.get("refs") else None  # a claim alone is no Patient anywhere yet

    @staticmethod
    def provinces(doc: dict[str, Any] | None) -> list[str]:
        seen: dict[str, None] = {}
        if doc:
            seen[str(doc.get("home"))] = None
            for ref in doc.get("refs") or []:
                seen[str(ref.get("province"))] = None
        return [p for p in seen if p and p != "None"]

    @staticmethod
    def refs(doc: dict[str, Any]) -> list[dict[str, str]]:
        return [{"province": str(r.get("province")), "ref": str(r.get("ref"))} for r in doc.get("refs") or []]
