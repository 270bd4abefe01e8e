"""The audit spool: records made durable on this node's disk first, then shipped to the database in large batches.

Why: group commit straight into the database has a floor. Each request waits for its own record, so a batch
holds at most one record per concurrent request: at 8 clients at least 0.125 insert per request (issue #12 asks
for 0.1), and every insert is paid by every request on a database that runs one write at a time. A record
appended to a local file and fsync'ed is durable against a crash of the process or the machine, as the
database's acknowledgement on this machine is; shipped every `interval` seconds, one insert carries every record
of that interval (about 200 at 400 requests/s).

Layout: `EHC_DATA_DIR/audit-spool/<database>/<pid>-<random>.seg`, each a run of BSON documents. A process
appends only to segments of its own and holds an exclusive `flock` on each until it has shipped and removed it:
a segment nobody holds is an orphan, left by a process that died.
- `append(docs)`: one write and one `fdatasync` per group-commit batch (app.audit.commit); the request is
  answered after that returns.
- `ship()`: the shipper thread (every `interval`), the sealer before a pass, and `close()` at exit: the current
  segment is closed (the next append starts a new one), inserted with one `insert_many` of the raw documents,
  and removed. A segment whose insert failed (the database unreachable, an insert cut half way) is let go: some
  of its records may be stored and even sealed already, so it is left to recovery as an orphan.
- `recover(sealed)`: the sealer, under its lease (so that nothing is sealed meanwhile), takes the orphans (of
  dead processes, and shipments that failed), and inserts each record unless `sealed(record)` (its
  AuditEvent exists) or pending holds it already (a duplicate id). So a record is never lost and never
  sealed twice. A record cut short at the end of an orphan was never acknowledged (its fsync had not
  returned): it is dropped with a warning.
- `settle()`: before an AuditEvent read, ships this process's records and waits (at most `interval`, bounded
  by `timeout`) until the records other live processes held when it was called have been shipped, so that a
  search sees the events written before it on this node.

Segments are created under a temporary name, locked, then renamed: a segment is never visible unlocked while its
owner lives (and recovery leaves a temporary file alone for a minute). The spool keeps state on the node's disk:
EHC_DATA_DIR must outlive the process (a volume), or the spool be switched off (EHC_AUDIT_SPOOL=off: records are
then inserted by the group committer, one insert per batch). docs/audit.md has the trade-off.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, InvalidOperation

from app.audit import pending

log = logging.getLogger("ehc.audit")
SUFFIX = ".seg"
SHIP_INTERVAL = 0.5  # seconds; the sealer runs every second, so this adds little to when an event is sealed
# A new segment file is locked within microseconds of its creation; one older than this was left by a process
# that died in between (it holds nothing) and is removed by recovery.
NEW_FILE_GRACE = 60.0


@dataclass
class SpoolStats:
    appends: int = 0  # fsync'ed writes (group-commit batches)
    ships: int = 0  # insert commands that shipped a segment
    shipped: int = 0  # records shipped
    recovered: int = 0  # records inserted by recovery
    skipped: int = 0  # records recovery found sealed or pending already


@dataclass
class _Segment:
    path: Path
    fd: int
    size: int = 0


class Spool:
    def __init__(self, directory: Path, collection: Collection, *, interval: float = SHIP_INTERVAL) -> None:
        self.dir = directory
        self.col = collection
        self.interval = interval
        self.stats = SpoolStats()
        self._lock = threading.Lock()  # the current segment
        self._ship_lock = threading.Lock()  # one shipment at a time
        self._current: _Segment | None = None
        self._pid = os.getpid()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- appending (the group committer's thread) -------------------------------------------------------

    def append(self, docs: list[dict[str, Any]]) -> None:
        """Durable on disk when this returns; raises OSError otherwise (the batch's requests then fail)."""
        data = b"".join(bson.encode(d, codec_options=self.col.codec_options) for d in docs)
        with self._lock:
            self._forked()
            seg = self._current
            if seg is None:
                seg = self._current = self._open()
            try:
                written = os.write(seg.fd, data)
                if written != len(data):
                    raise OSError(f"short write to the audit spool ({written} of {len(data)} bytes)")
                os.fdatasync(seg.fd)
            except BaseException:
                # Not acknowledged: cut it off where it can, and start a new segment, so that a torn record
                # can only ever be a segment's last; the segment goes to recovery.
                with contextlib.suppress(OSError):
                    os.ftruncate(seg.fd, seg.size)
                self._current = None
                _let_go(seg)
                raise
            seg.size += written
            self.stats.appends += 1
            self._ensure_shipper()

    def _open(self) -> _Segment:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{pending.pending_id()}-{os.getpid()}"  # time-ordered: it names the batches it is shipped as
        tmp = self.dir / f".{name}.new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        path = self.dir / f"{name}{SUFFIX}"
        try:
            # Locked before it gets its segment name; a recovery leaves a new file alone for NEW_FILE_GRACE s.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, path)
            _fsync_dir(self.dir)  # the segment's name is durable before any record in it is acknowledged
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return _Segment(path, fd)

    def _forked(self) -> None:
        """(Under the lock.) In a forked child, the parent's segments stay the parent's: close our copies."""
        if self._pid == os.getpid():
            return
        if self._current is not None:
            os.close(self._current.fd)
        self._current, self._thread, self._pid = None, None, os.getpid()

    # -- shipping ---------------------------------------------------------------------------------------

    def _ensure_shipper(self) -> None:
        if self.interval > 0 and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._run, name="ehc-audit-ship", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            try:
                self.ship()
            except InvalidOperation:  # the database client was closed: the app is gone
                return
            except Exception:  # noqa: BLE001 - the thread must outlive a passing error; the segment is kept
                log.exception("audit: shipping the spool failed; retrying")

    def ship(self) -> int:
        """Insert the records appended so far with one command; returns how many. A failed insert leaves its
        segment to recover()."""
        with self._ship_lock:
            with self._lock:
                self._forked()
                seg, self._current = self._current, None
            if seg is None:
                return 0
            try:
                docs = [RawBSONDocument(raw) for raw in _records(_read(seg.fd), seg.path)]
                if docs:
                    self.col.insert_many(pending.batches(docs, seg.path.stem), ordered=False)
            except BulkWriteError as err:
                if any(e.get("code") != 11000 for e in err.details.get("writeErrors", [])) \
                        or err.details.get("writeConcernErrors"):
                    _let_go(seg)
                    raise
            except BaseException:
                _let_go(seg)
                raise
            self._remove(seg)
            self.stats.ships += 1
            self.stats.shipped += len(docs)
            return len(docs)

    def _remove(self, seg: _Segment) -> None:
        os.unlink(seg.path)
        os.close(seg.fd)

    # -- recovery (the sealer, under its lease) ------------------------------------------------------------

    def recover(self, sealed: Callable[[RawBSONDocument], bool], budget: float = 2.0) -> int:
        """Insert the unsealed records of orphaned segments (of dead processes, and shipments that failed),
        whole segments until `budget` seconds are spent; returns how many records were inserted."""
        started, inserted = time.monotonic(), 0
        with self._ship_lock:
            todo = list(self._orphans())
            try:
                while todo and time.monotonic() - started <= budget:
                    inserted += self._recover_one(todo[0], sealed)
                    todo.pop(0)
            finally:  # what is left waits for the next pass
                for seg in todo:
                    os.close(seg.fd)
        return inserted

    def _recover_one(self, seg: _Segment, sealed: Callable[[RawBSONDocument], bool]) -> int:
        records = [RawBSONDocument(raw) for raw in _records(_read(seg.fd), seg.path)]
        stored = 0
        # Batch by batch, with the ids a shipment gives them: a batch that is pending already (shipped before
        # its shipment failed) is a duplicate, and records sealed already are left out.
        for batch in pending.batches(records, seg.path.stem):
            unsealed = [doc for doc in batch["recs"] if not sealed(doc)]
            self.stats.skipped += len(batch["recs"]) - len(unsealed)
            if not unsealed:
                continue
            try:
                self.col.insert_one({**batch, "recs": unsealed})
                stored += len(unsealed)
            except DuplicateKeyError:
                self.stats.skipped += len(unsealed)
        self._remove(seg)
        self.stats.recovered += stored
        if stored:
            log.warning("audit: recovered %s record(s) from spool segment %s", stored, seg.path.name)
        return stored

    def _orphans(self) -> Iterator[_Segment]:
        """Segments (and unrenamed new files) whose owner died: their flock can be taken."""
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.endswith(".new"):  # its creator died before naming it: it was never written to
                if _age(entry) > NEW_FILE_GRACE:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue
            if entry.name.endswith(SUFFIX) and (seg := _try_lock(Path(entry.path))) is not None:
                yield seg

    # -- readers ------------------------------------------------------------------------------------------

    def settle(self, timeout: float = 2.0) -> None:
        """Ship this process's records, then wait until every non-empty segment that other live processes of
        this node held now has been shipped (at most about `interval`, never more than `timeout`)."""
        self.ship()
        with self._lock:
            mine = {self._current.path.name} if self._current else set()
        waiting = [path for path in segments(self.dir)
                   if path.name not in mine and _size(path) > 0 and _held(path)]
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if p.exists()]
            if waiting:
                time.sleep(0.01)

    def close(self) -> None:
        """Ship what is left (at exit); a failure leaves it for the next recovery."""
        self._closed = True
        self._wake.set()
        if self._pid != os.getpid():
            return
        try:
            self.ship()
        # Kept on disk; recovered by the next sealer pass on this node. BaseException: a second Ctrl-C reaching a
        # gunicorn worker while it ships at exit raises SystemExit here, which would print a traceback.
        except BaseException:  # noqa: BLE001
            log.warning("audit: the spool could not be shipped at exit; the next server start recovers it")


def _let_go(seg: _Segment) -> None:
    """A segment whose records may be partly stored already: closed, so that its lock goes and recovery (in
    any process of the node, under the sealer's lease) takes it as an orphan. No descriptor is kept per failed
    shipment, however long the database stays away."""
    os.close(seg.fd)


def _close_at_exit(ref: weakref.ref[Spool]) -> None:
    spool = ref()
    if spool is not None:
        spool.close()


def _read(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0)


def _records(data: bytes, path: Path) -> Iterator[bytes]:
    """The complete BSON documents of a segment; a record cut short at the end is dropped (never acknowledged)."""
    at = 0
    while at + 4 <= len(data):
        (size,) = struct.unpack_from("<i", data, at)
        if size < 5 or at + size > len(data):
            break
        yield data[at:at + size]
        at += size
    if at != len(data):
        log.warning("audit: spool segment %s ends with %s byte(s) of an unfinished record; dropped",
                    path.name, len(data) - at)


def _try_lock(path: Path) -> _Segment | None:
    """The segment with its flock taken, or None when a live process holds it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if os.fstat(fd).st_nlink == 0:  # shipped and removed by its owner just now
        os.close(fd)
        return None
    return _Segment(path, fd, os.fstat(fd).st_size)


def _age(entry: os.DirEntry[str]) -> float:
    try:
        return time.time() - entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # shipped and removed meanwhile
        return 0


def _held(path: Path) -> bool:
    """A live process holds this segment (its flock cannot be taken)."""
    seg = _try_lock(path)
    if seg is None:
        return path.exists()
    os.close(seg.fd)
    return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segments(directory: Path) -> list[Path]:
    """The segments in a spool directory: records not shipped yet (being written, or left to recovery)."""
    return sorted(directory.glob(f"*{SUFFIX}")) if directory.exists() else []


def spool_dir(data_dir: Path, db_name: str) -> Path:
    """Where a node's spool lives: one directory per database, so nodes sharing a data directory never ship
    each other's records."""
    return data_dir / "audit-spool" / db_name
