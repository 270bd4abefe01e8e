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
from pymongo.errors import BulkWriteError


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

    def add(self, resource_id: str, keys: Iterable[str]) -> None:
        ops = [UpdateOne({"_id": k}, {"$addToSet": {"ids": resource_id}}, upsert=True) for k in sorted(keys)]
        for attempt in range(3):
            if not ops:
                return
            try:
                self.col.bulk_write(ops, ordered=False)
                return
            except BulkWriteError as err:
                # Two writers upserting the same new key: one insert wins, the other retries as an update.
                errors = err.details.get("writeErrors", [])
                if attempt == 2 or any(e.get("code") != 11000 for e in errors):
                    raise
                ops = [ops[e["index"]] for e in errors]

    def remove(self, resource_id: str, keys: Iterable[str]) -> None:
        ops = [UpdateOne({"_id": k}, {"$pull": {"ids": resource_id}}) for k in sorted(keys)]
        if ops:
            self.col.bulk_write(ops, ordered=False)

    def lookup(self, key: str) -> list[str]:
        doc = self.col.find_one({"_id": key})
        return list(doc["ids"]) if doc else []
