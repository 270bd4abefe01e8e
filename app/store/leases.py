"""Named leases: a document whose unique _id is the lock. Serialises conditional creates with the same
criteria and master-index registrations of the same resident, across processes.

A lease expires so that a process killed while holding one cannot block the name forever. Taking over an
expired lease is one atomic update of exactly the lease that was seen expired (same token): of several
waiters that saw it expire, one update matches and the others find a live lease and wait. (Deleting it by
name and inserting again, as before, let a late waiter delete the new holder's lease: two holders.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from app.core.errors import FhirError
from app.core.timeutil import utcnow
from app.store.database import insert_new


class Leases:
    # Long enough for any single write or transaction; short enough that a process killed while holding a
    # lease blocks the name for seconds, not minutes (waiters take it over once it expired).
    def __init__(self, collection: Collection, ttl_seconds: float = 10.0) -> None:
        self.col = collection
        self.ttl = ttl_seconds
        # Test hook: called with the expired lease a waiter is about to take over.
        self.before_takeover: Callable[[dict[str, Any]], None] | None = None

    @contextmanager
    def hold(self, name: str, wait_seconds: float = 20.0) -> Iterator[None]:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_seconds
        delay = 0.002
        while True:
            now = utcnow()
            until = now + timedelta(seconds=self.ttl)
            try:
                self.col.insert_one({"_id": name, "token": token, "until": until})
                break
            except DuplicateKeyError:
                held = self.col.find_one({"_id": name})
                if held and held["until"] < now:
                    # The holder died: take over exactly the lease we saw (only one waiter's update matches).
                    if self.before_takeover is not None:
                        self.before_takeover(held)
                    taken = self.col.find_one_and_update({"_id": name, "token": held["token"]},
                                                         {"$set": {"token": token, "until": until}})
                    if taken is not None:
                        break
                    continue
            if time.monotonic() > deadline:
                raise FhirError(409, f"another request holds {name!r}; retry", code="lock-error")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            # Only our own lease: after an expiry another holder may own the name. One atomic find-and-delete
            # (FerretDB serialises findAndModify), so we never delete a lease taken over meanwhile.
            # (_leases stays tiny, so this two-field filter is cheap even where only _id filters use an index.)
            self.col.find_one_and_delete({"_id": name, "token": token})

    def hold_many(self, names: list[str]) -> tuple[str, set[str]]:
        """Take the free leases among `names` in one insert_many, all under one token (a batch of the bulk
        import); returns (token, the names that were held by someone else and are NOT taken). Nothing waits: a
        caller sends what it could not take to the one-name path (`hold`), which waits or takes over an expired
        lease. Release what was taken with `release_many(token)`; a process killed before that leaves leases
        that expire after `ttl` seconds like any other."""
        token = uuid.uuid4().hex
        ordered = sorted(set(names))
        if not ordered:
            return token, set()
        until = utcnow() + timedelta(seconds=self.ttl)
        try:
            held = insert_new(self.col, [{"_id": n, "token": token, "until": until} for n in ordered])
        except BulkWriteError:  # not a duplicate: release what this call did insert, then pass it on
            self.release_many(token)
            raise
        return token, {ordered[i] for i in held}

    def release_many(self, token: str) -> None:
        """Release every lease taken under `token` (one command; a lease taken over after it expired has
        another token and stays)."""
        self.col.delete_many({"token": token})
