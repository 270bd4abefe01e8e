"""The durable queue of index entries a province node owes the national node (collection `fed_outbox`).

One document per Patient (`_id` = patient id): a Patient written twice before delivery is sent once, as it is
then, with the cards it no longer holds (`withdraw`: deleted, or replaced) withdrawn first. The entry holds no
ID number: the sender reads the Patient when it delivers. An entry is deleted only
after the national node has answered 200, and only if it was not queued again meanwhile (`seq`); a failed
delivery is retried with backoff. The national node's add is idempotent, so an entry delivered twice (a crash
between the answer and the delete) leaves one index entry.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import UpdateOne
from pymongo.database import Database

MAX_BACKOFF = 5.0


class Outbox:
    def __init__(self, db: Database) -> None:
        self.col = db["fed_outbox"]

    def enqueue(self, patient_id: str, withdraw: list[str] | None = None) -> None:
        update: dict[str, Any] = {"$set": {"seq": time.time_ns(), "next": 0.0, "tries": 0}}
        if withdraw:
            update["$addToSet"] = {"withdraw": {"$each": withdraw}}
        self.col.update_one({"_id": patient_id}, update, upsert=True)

    def enqueue_all(self, patient_ids: list[str], chunk: int = 50) -> None:
        """Queue many (the residents registered before the national node was added); small bulks for FerretDB."""
        seq = time.time_ns()
        for i in range(0, len(patient_ids), chunk):
            self.col.bulk_write([UpdateOne({"_id": pid}, {"$set": {"seq": seq, "next": 0.0, "tries": 0}}, upsert=True)
                                 for pid in patient_ids[i: i + chunk]], ordered=False)

    def due(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.col.find({"next": {"$lte": time.time()}}).limit(limit))

    def done(self, entry: dict[str, Any]) -> None:
        self.col.delete_one({"_id": entry["_id"], "seq": entry["seq"]})

    def failed(self, entry: dict[str, Any], delay: float | None = None) -> None:
        """Try again later: with backoff (at most MAX_BACKOFF), or after `delay` seconds (a refusal that would be
        the same at once)."""
        tries = int(entry.get("tries", 0)) + 1
        wait = min(MAX_BACKOFF, 0.25 * 2 ** tries) if delay is None else delay
        self.col.update_one({"_id": entry["_id"], "seq": entry["seq"]},
                            {"$set": {"tries": tries, "next": time.time() + wait}})

    def size(self) -> int:
        return int(self.col.count_documents({}))
