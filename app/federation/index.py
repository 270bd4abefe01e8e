"""The national cross-domain index: one resident, one card, the node Patients that hold them.

Collection `fed_index`, `_id` = blind index of the resident ID number (SM3-HMAC under the national node's
blind-index key; the number itself is never stored) -> {card: the card ID, home: the province that
registered the resident first, refs: [{province, ref: absolute URL of that node's Patient}], at}.
Collection `fed_cards`, `_id` = card ID -> {blind}: the resident of a card (for QR codes verified at a node that
does not know the resident). Nothing clinical, no name, no clear ID number.

The first claim wins: two nodes registering one resident at the same moment both get the card of the one whose
insert landed first (a unique _id; the loser reads the winner's). A card already bound to another resident is
refused (409): one card is never two residents'. Adding a node Patient is an $addToSet, so a
queue that delivers an entry twice changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from app.core.errors import conflict
from app.keyring import Keyring

ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
EHC_SYSTEM = "urn:oid:2.16.156.10011.1.19"


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
        doc = self.entries.find_one({"_id": key}, {"card": 1})
        if doc is None:
            holder = self.cards.find_one({"_id": card}, {"blind": 1})
            if holder is not None and holder.get("blind") != key:
                raise conflict(f"card {card} is already the card of another resident in the national index",
                               expression="card")
            try:
                self.entries.insert_one({"_id": key, "card": card, "home": province, "refs": [],
                                         "at": datetime.now(UTC).replace(tzinfo=None)})
                doc = {"card": card}
            except DuplicateKeyError:  # another node's registration of the same resident landed first
                doc = self.entries.find_one({"_id": key}, {"card": 1}) or {"card": card}
        canonical = str(doc["card"])
        self.cards.update_one({"_id": canonical}, {"$set": {"blind": key}}, upsert=True)
        return canonical

    def add(self, id_number: str, card: str, province: str, ref: str) -> str:
        canonical = self.claim(id_number, card, province)
        self.entries.update_one({"_id": self.blind(id_number)},
                                {"$addToSet": {"refs": {"province": province, "ref": ref}}})
        return canonical

    def find(self, id_number: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self.entries.find_one({"_id": self.blind(id_number)})
        return doc

    def by_card(self, card: str) -> dict[str, Any] | None:
        link = self.cards.find_one({"_id": card})
        if link is None:
            return None
        found: dict[str, Any] | None = self.entries.find_one({"_id": link["blind"]})
        return found

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
