"""Posting lists served by _id lookups: which resources reference a target, which carry an identifier.

FerretDB v1 on SQLite answers only `{_id: ...}` filters from an index; every other filter scans the
collection. These lists make the selective searches (by patient, subject, identifier ...) and the
"who references this Patient" checks index lookups on both FerretDB and MongoDB. A list may hold ids
that no longer match (entries are added before a write and removed after it), never miss one: every
candidate is re-checked against the stored document.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

# Keys written in one update command. A write touches one to three keys; FerretDB v1 stalls on bulks of
# ~100 updates of existing documents, so larger sets go in chunks of this size.
BULK_KEYS = 16


def reference_key(resource_type: str, target: str) -> str:
    return f"{resource_type}|r|{target}"


def identifier_key(resource_type: str, token: str) -> str:
    return f"{resource_type}|i|{token}"


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
    def __init__(self, collection: Collection) -> None:
        self.col = collection

    # One update command per write (a command may carry several statements), not one per key: a write usually
    # touches one to three keys. Racing upserts of one new key (a duplicate key, or FerretDB's malformed reply)
    # are redone one key at a time: $addToSet and $pull are idempotent.
    def add(self, resource_id: str, keys: Iterable[str]) -> None:
        self._apply(sorted(keys), {"$addToSet": {"ids": resource_id}}, upsert=True)

    def remove(self, resource_id: str, keys: Iterable[str]) -> None:
        self._apply(sorted(keys), {"$pull": {"ids": resource_id}}, upsert=False)

    def _apply(self, keys: list[str], update: dict[str, Any], upsert: bool) -> None:
        for i in range(0, len(keys), BULK_KEYS):
            chunk = keys[i: i + BULK_KEYS]
            if len(chunk) == 1:
                self._update(chunk[0], update, upsert)
                continue
            try:
                self.col.bulk_write([UpdateOne({"_id": k}, update, upsert=upsert) for k in chunk], ordered=False)
            except (KeyError, PyMongoError):
                for key in chunk:
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

    def lookup(self, key: str) -> list[str]:
        doc = self.col.find_one({"_id": key})
        return list(doc["ids"]) if doc else []
