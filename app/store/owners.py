"""Which process holds what: an owner id per process and a heartbeat document it renews every second.

Transaction journals and history slots name the process that wrote them (its owner id: host, machine boot
id, pid and a random part, so a reused pid is a different owner). While the process lives, a daemon thread
renews `_owners/<owner id>` with the database server's clock (`$currentDate`). Another process judges an owner
dead when that heartbeat is older than `timeout` seconds (5 by default) by the same clock, so clock skew between
machines does not matter. Only then are its pending journals undone and its history slots taken over: a writer
that merely stalls inside a live process keeps what it holds.

Each heartbeat also runs the tasks registered with `add_task` (journal recovery), so what a dead process left
half done is undone within seconds even when no request comes.

Takeovers of something a dead owner held go through `take_over`: one insert of a unique marker (or one atomic
update of the marker when its taker died too), so two processes can never both take the same thing.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pymongo import ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, InvalidOperation, PyMongoError

from app.core.timeutil import utcnow

log = logging.getLogger("ehc.store")

HEARTBEAT_SECONDS = 1.0
OWNER_TIMEOUT = 5.0  # an owner whose heartbeat is older than this is dead
# Documents written before owners were recorded (no owner field) count as a dead owner's after this age.
LEGACY_AGE = timedelta(seconds=5)
_FORGET_OWNERS_AFTER = timedelta(hours=1)  # heartbeat documents of long-dead owners are removed


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


@dataclass
class Claim:
    """A history slot this thread claimed: released by `abandon_claims` when its write failed."""

    collection: str
    slot_id: str
    rid: str
    vid: int


class Owner:
    """This process, for one database: its id, its heartbeat and its periodic tasks."""

    def __init__(self, db: Database, timeout: float = OWNER_TIMEOUT, interval: float = HEARTBEAT_SECONDS) -> None:
        self.db = db
        self.col = db["_owners"]
        self.markers = db["_takeovers"]
        self.pid = os.getpid()
        self.id = f"{socket.gethostname()}/{_boot_id()}/{self.pid}/{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        self.interval = interval
        self._server_now: datetime | None = None  # the database clock at our last beat ...
        self._beat_mono = 0.0  # ... and our monotonic clock then
        self._tasks: list[Callable[[], object]] = []
        self._retry: list[Claim] = []  # slots whose release failed (database down): retried each beat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_forget = 0.0
        self._local = threading.local()

    # -- heartbeat -------------------------------------------------------------------------------------

    def beat(self) -> None:
        """Renew our heartbeat; remember the database's clock."""
        sent = time.monotonic()
        doc = self.col.find_one_and_update(
            {"_id": self.id},
            {"$currentDate": {"beat": True}, "$set": {"pid": self.pid, "host": socket.gethostname()}},
            upsert=True, return_document=ReturnDocument.AFTER)
        assert doc is not None  # an upsert returning the document after always has one
        with self._lock:
            self._server_now = doc["beat"]
            self._beat_mono = sent

    def ensure_fresh(self) -> None:
        """Beat now unless the last beat is recent (so that nobody judges us dead while we start a write)."""
        if self._server_now is None or time.monotonic() - self._beat_mono > self.interval * 1.5:
            self.beat()
        self.start()

    def server_now(self) -> datetime:
        """The database server's clock now, from our last beat plus the time since."""
        if self._server_now is None:
            self.beat()
        with self._lock:
            assert self._server_now is not None
            return self._server_now + timedelta(seconds=time.monotonic() - self._beat_mono)

    def is_alive(self, owner_id: str | None, at: datetime | None = None,
                 seen: dict[str, bool] | None = None) -> bool:
        """Whether the owner of something may still act on it. `at`: when it was written, for documents
        written before owners were recorded. `seen` caches answers within one pass."""
        if owner_id is None:
            return at is not None and utcnow() - at < LEGACY_AGE
        if owner_id == self.id:
            return True
        if seen is not None and owner_id in seen:
            return seen[owner_id]
        doc = self.col.find_one({"_id": owner_id})
        alive = bool(doc and doc.get("beat") and
                     self.server_now() - doc["beat"] < timedelta(seconds=self.timeout))
        if seen is not None:
            seen[owner_id] = alive
        return alive

    def take_over(self, key: str, previous: str | None) -> bool:
        """Become the one process that takes over `key` from its dead owner `previous`. Exactly one caller
        gets True, also when several race, and also when an earlier taker died before finishing."""
        marker = f"{key}@{previous or 'legacy'}"
        try:
            self.markers.insert_one({"_id": marker, "by": self.id, "at": utcnow()})
            return True
        except DuplicateKeyError:
            held = self.markers.find_one({"_id": marker})
            if held is None or self.is_alive(held.get("by"), held.get("at")):
                return False
            # The taker died too: take its marker over with one atomic update of exactly what we saw.
            won = self.markers.find_one_and_update({"_id": marker, "by": held.get("by")},
                                                   {"$set": {"by": self.id, "at": utcnow()}})
            return won is not None

    # -- the heartbeat thread --------------------------------------------------------------------------

    def add_task(self, task: Callable[[], object]) -> None:
        """Run `task` after every heartbeat (in the heartbeat thread)."""
        with self._lock:
            if task not in self._tasks:
                self._tasks.append(task)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"ehc-heartbeat-{self.db.name}", daemon=True)
            self._thread.start()

    def stop(self, forget: bool = True) -> None:
        """Stop beating; `forget` removes our heartbeat so that others need not wait for it to go stale."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.interval * 3)
        if forget:
            try:
                self.col.delete_one({"_id": self.id})
            except (PyMongoError, InvalidOperation):
                pass

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                if failing:
                    log.warning("database reachable again; heartbeat %s renewed", self.id)
                failing = False
                self._retry_releases()
                for task in list(self._tasks):
                    task()
                self._forget_dead_owners()
            except InvalidOperation:  # the client was closed: this owner is finished
                _forget(self)
                return
            except PyMongoError as err:
                if not failing:
                    log.warning("heartbeat %s failed (%s); retrying every %.0f s", self.id,
                                type(err).__name__, self.interval)
                failing = True
            except Exception:  # a task's bug must not stop the heartbeat
                log.exception("heartbeat task failed")

    def _forget_dead_owners(self) -> None:
        if time.monotonic() - self._last_forget < 60:
            return
        self._last_forget = time.monotonic()
        cutoff = self.server_now() - _FORGET_OWNERS_AFTER
        for doc in list(self.col.find({}, {"_id": 1, "beat": 1})):
            if doc.get("beat") and doc["beat"] < cutoff:
                self.col.delete_one({"_id": doc["_id"]})

    # -- history slots claimed by this process -----------------------------------------------------------

    def note_claim(self, claim: Claim) -> None:
        claims: list[Claim] = self._local.__dict__.setdefault("claims", [])
        claims.append(claim)
        del claims[:-8]  # earlier ones have finished (or their failure was handled)

    def abandon_claims(self) -> None:
        """The write this thread was doing failed: hand the history slots it claimed to the heartbeat, which
        releases those the write never moved past (within a second, or once the database is back), so the
        resource does not stay locked while this process lives. Nothing here touches the database: the error
        answer is not delayed by it."""
        claims: list[Claim] = self._local.__dict__.pop("claims", [])
        if claims:
            with self._lock:
                self._retry.extend(claims)

    def _release(self, claim: Claim) -> None:
        current = self.db[claim.collection].find_one({"_id": claim.rid}, {"vid": 1})
        if current is None or current["vid"] != claim.vid:
            return  # the write finished: the slot is history now
        slot = self.db[f"{claim.collection}_history"].find_one({"_id": claim.slot_id}, {"owner": 1, "txn": 1})
        if slot and slot.get("owner") == self.id and not slot.get("txn"):
            self.db[f"{claim.collection}_history"].delete_one({"_id": claim.slot_id})

    def _retry_releases(self) -> None:
        with self._lock:
            pending, self._retry = self._retry, []
        for i, claim in enumerate(pending):
            try:
                self._release(claim)
            except PyMongoError:
                with self._lock:
                    self._retry.extend(pending[i:])
                raise

    # -- the transaction this thread is applying -----------------------------------------------------------

    @contextmanager
    def transaction(self, txid: str) -> Iterator[None]:
        """Slots claimed inside are marked with the transaction: only its journal releases them."""
        self._local.txid = txid
        try:
            yield
        finally:
            self._local.txid = None

    def current_transaction(self) -> str | None:
        txid: str | None = getattr(self._local, "txid", None)
        return txid


_owners: dict[tuple[int, str], Owner] = {}
_owners_lock = threading.Lock()


def owner_for(db: Database, timeout: float | None = None) -> Owner:
    """This process's owner for `db` (one per process and database; a forked child gets its own)."""
    key = (id(db.client), db.name)
    with _owners_lock:
        owner = _owners.get(key)
        if owner is None or owner.pid != os.getpid():
            owner = Owner(db, timeout if timeout is not None else OWNER_TIMEOUT)
            _owners[key] = owner
        elif timeout is not None:
            owner.timeout = timeout
        return owner


def _forget(owner: Owner) -> None:
    with _owners_lock:
        for key, value in list(_owners.items()):
            if value is owner:
                del _owners[key]


@atexit.register
def _stop_all() -> None:
    for owner in list(_owners.values()):
        if owner.pid == os.getpid():
            try:
                owner.stop(forget=True)
            # A second Ctrl-C reaching a gunicorn worker during its exit raises SystemExit here: the heartbeat
            # is then left to go stale (as a killed process's does), without a traceback from the exit hook.
            except BaseException:  # noqa: BLE001
                log.warning("could not remove the heartbeat of %s at exit; it goes stale in %s s",
                            owner.id, owner.timeout)



_paused: set[str] = set()


def fault_pause_after_claim(rid: str) -> None:
    """Test hook for the stalled-writer test: EHC_FAULT_SLOT_PAUSE="<resource id>:<seconds>" makes the first
    write of that resource in this process stall that long right after claiming its history slot."""
    spec = os.environ.get("EHC_FAULT_SLOT_PAUSE")
    if spec:
        target, seconds = spec.rsplit(":", 1)
        if target == rid and rid not in _paused:
            _paused.add(rid)
            time.sleep(float(seconds))
