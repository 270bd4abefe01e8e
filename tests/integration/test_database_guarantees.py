"""What the storage layer relies on from the database, checked on the server the tests run against:
single-document updates are atomic (FerretDB v1 needs our patch for that) and a unique _id insert is the
one way to win a race."""

from __future__ import annotations

import threading

from pymongo import MongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError


def test_concurrent_add_to_set_and_inc_lose_nothing(db_uri):
    db = MongoClient(db_uri, maxPoolSize=16).get_default_database()
    col = db["atomicity"]
    seen: list[int] = []

    def worker(t: int) -> None:
        for i in range(50):
            col.update_one({"_id": "list"}, {"$addToSet": {"ids": f"{t}-{i}"}}, upsert=True)
            doc = col.find_one_and_update({"_id": "counter"}, {"$inc": {"n": 1}}, upsert=True,
                                          return_document=ReturnDocument.AFTER)
            seen.append(doc["n"])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(col.find_one({"_id": "list"})["ids"]) == 400
    assert sorted(seen) == list(range(1, 401))


def test_unique_id_insert_has_one_winner(db_uri):
    col = MongoClient(db_uri, maxPoolSize=16).get_default_database()["races"]
    wins: list[int] = []

    def worker(t: int) -> None:
        try:
            col.insert_one({"_id": "slot", "by": t})
            wins.append(t)
        except DuplicateKeyError:
            pass

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(wins) == 1 and col.find_one({"_id": "slot"})["by"] == wins[0]
