"""Named leases: a document whose unique _id is the lock. Serialises conditional creates with the same
criteria and master-index registrations of the same resident, across processes.

A lease expires so that a process killed while holding one cannot block the name forever.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from app.core.errors import FhirError
from app.core.timeutil import utcnow


class Leases:
    # Long enough for any single write or transaction; short enough that a process killed while holding a
    # lease blocks the name for seconds, not minutes (waiters take it over once it expired).
    def __init__(self, collection: Collection, ttl_seconds: float = 10.0) -> None:
        self.col = collection
        self.ttl = ttl_seconds

    @contextmanager
    def hold(self, name: str, wait_seconds: float = 20.0) -> Iterator[None]:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_seconds
        delay = 0.002
        while True:
            now = utcnow()
            try:
                self.col.insert_one({"_id": name, "token": token, "until": now + timedelta(seconds=self.ttl)})
                break
            except DuplicateKeyError:
                held = self.col.find_one({"_id": name})
                if held and held["until"] < now:
                    # The holder died: take the lease over (only one taker wins the delete+insert race).
                    self.col.delete_one({"_id": name})
                    continue
            if time.monotonic() > deadline:
                raise FhirError(409, f"another request holds {name!r}; retry", code="lock-error")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            # Only our own lease: after an expiry another holder may own the name. (_leases stays tiny, so
            # this two-field filter is cheap even where only _id filters use an index.)
            self.col.delete_one({"_id": name, "token": token})
