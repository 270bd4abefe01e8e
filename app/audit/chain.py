"""The SM3 hash chain over audit events (GB/T 32905 SM3) and its verification.

Writers leave events in `_audit_pending` (in batches: app.audit.pending). The sealer (app.audit.sealer), one
at a time across processes, gives each the next sequence number n, stores it as an AuditEvent and appends a
chain entry `{_id: key(n), seq, ev, d, h, done, bat}` to `_audit_chain` (`done`: the pending records it sealed,
`bat`: the batches that held them):

    d(n) = SM3(canonical(event n))            canonical = JSON, sorted keys, no spaces, UTF-8
    h(n) = SM3(h(n-1) || d(n))                h(0) = 32 zero bytes

Numbers are handed out only by sealing, so the chain has no gaps by construction: a missing number is a
removal. `verify(db)` recomputes every d(n) from the stored events and every h(n) from the chain, and names
each event that was edited, removed, reordered, sealed twice, or added outside the chain. Given the signed
checkpoints (app.audit.checkpoints) it also names a chain cut short or rewritten after a checkpoint, and a
forged checkpoint; given the way to rebuild an event's search index, it names an event whose patient index
(its `ix` values, and the posting lists `AuditEvent?patient=` reads) no longer matches its content.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.audit.checkpoints import Line
from app.audit.pending import record_ids
from app.crypto import SM2PublicKey
from app.crypto.sm3 import sm3
from app.store.keys import keys_for, reference_key, scan

EVENTS = "AuditEvent"
CHAIN = "_audit_chain"
STATE = "_audit_state"
PENDING = "_audit_pending"  # one marker per event not sealed yet (the intent of a write in flight)
HEAD_ID = "audit-head"  # {_id, seq, h}: the last sealed event and its chain hash
GENESIS = bytes(32)
HASHED_FIELDS = ("vid", "del", "prov", "res")
POSTINGS = "_keys"  # posting lists (app.store.keys)


def key(seq: int) -> str:
    """The chain entry id of sequence number seq (a string _id: FerretDB v1 answers those from its index)."""
    return f"{seq:012d}"


def canonical(doc: dict[str, Any]) -> bytes:
    """The hashed part of a stored event document as canonical JSON."""
    body = {k: doc.get(k) for k in HASHED_FIELDS if doc.get(k) is not None}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def digest(doc: dict[str, Any]) -> bytes:
    return sm3(canonical(doc))


def link(prev: bytes, d: bytes) -> bytes:
    return sm3(prev + d)


@dataclass
class Problem:
    seq: int | None
    event_id: str
    kind: str  # edited | removed | reordered | duplicate | chain-edited | not-chained | head | index
    # | truncated | rewritten | checkpoint
    detail: str

    def __str__(self) -> str:
        if self.event_id == "?":
            where = f"event {self.seq}" if self.seq else "checkpoints"
        else:
            where = f"event {self.seq} (AuditEvent/{self.event_id})" if self.seq else f"AuditEvent/{self.event_id}"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class ChainReport:
    sealed: int = 0  # length of the chain
    head: str = GENESIS.hex()  # h of the last sealed event
    pending: int = 0  # written but not sealed yet (events, and intents of writes in flight)
    problems: list[Problem] = field(default_factory=list)
    checkpoints: int = 0  # signed checkpoints of this chain that verified
    last_checkpoint: dict[str, Any] | None = None  # the newest of them
    index_checked: bool = False  # the patient index was compared with the events

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "sealed": self.sealed, "head": self.head,
                "pending": self.pending, "checkpoints": self.checkpoints, "last_checkpoint": self.last_checkpoint,
                "index_checked": self.index_checked, "first_bad": str(self.first) if self.first else None,
                "problems": [str(p) for p in self.problems]}


@dataclass
class IndexCheck:
    """How to check the patient index: rebuild(stored event) gives the document as the sealer would store it
    (Repository.build_doc), codes are the reference parameters with posting lists (Repository.keyed_codes)."""

    rebuild: Callable[[dict[str, Any]], dict[str, Any]]
    codes: Sequence[str] = ("patient",)


@dataclass
class CheckpointCheck:
    """The lines of the checkpoint file, this chain's name, and the node's public keys by kid."""

    lines: Sequence[Line]
    chain: str
    public_key: Callable[[str], SM2PublicKey | None]


def verify(db: Any, *, checkpoints: CheckpointCheck | None = None, index: IndexCheck | None = None) -> ChainReport:
    """Walk the whole chain (db: a pymongo Database). Reads each collection once, in any order."""
    report = ChainReport()
    head = db[STATE].find_one({"_id": HEAD_ID}) or {}
    entries: dict[int, dict[str, Any]] = {}
    for e in db[CHAIN].find({}):
        if isinstance(e.get("seq"), int) and e["_id"] == key(e["seq"]) and isinstance(e.get("ev"), str):
            entries[e["seq"]] = e
        else:
            report.problems.append(Problem(None, str(e.get("ev")), "chain-edited",
                                           f"chain entry {e['_id']} is malformed"))
    by_digest = {e.get("d"): n for n, e in entries.items()}
    events = {str(doc["_id"]): doc for doc in db[EVENTS].find({}, {"so": 0} if index else {"ix": 0, "so": 0})}
    pending = set(record_ids(db[PENDING]))
    report.pending = len(pending)
    top = max([int(head.get("seq") or 0), *entries])
    prev: bytes | None = GENESIS
    chained: dict[str, int] = {}
    for n in range(1, top + 1):
        entry = entries.get(n)
        if entry is None:
            report.problems.append(Problem(n, "?", "removed", f"chain entry {n} and its event are missing"))
            prev = None  # cannot check the next link; resynchronise on the stored hash
            continue
        eid = entry["ev"]
        try:
            d, h = bytes.fromhex(entry["d"]), bytes.fromhex(entry["h"])
        except (KeyError, TypeError, ValueError):
            report.problems.append(Problem(n, eid, "chain-edited", "the chain entry is not readable"))
            prev = None
            continue
        if prev is not None and link(prev, d) != h:
            report.problems.append(Problem(n, eid, "chain-edited",
                                           "its chain hash does not follow from the previous event's"))
        prev = h
        if eid in chained:
            report.problems.append(Problem(n, eid, "duplicate", f"already sealed as event {chained[eid]}"))
            continue
        chained[eid] = n
        doc = events.get(eid)
        if doc is None:
            report.problems.append(Problem(n, eid, "removed", "sealed, but no longer stored"))
            continue
        got = digest(doc).hex()
        if got != entry["d"]:
            report.problems.append(_changed(n, eid, got, doc, by_digest))
    for eid in sorted(set(events) - set(chained)):
        if eid not in pending:  # (a pass that died between storing and chaining leaves it pending)
            report.problems.append(Problem(None, eid, "not-chained", "an AuditEvent that is not in the chain"))
    report.sealed = top
    if prev is not None:
        report.head = prev.hex()
    if head.get("h") and head.get("seq") == top and entries.get(top, {}).get("h") != head["h"]:
        report.problems.append(Problem(top, str(entries.get(top, {}).get("ev")), "head",
                                       "the recorded head differs from the last entry"))
    if checkpoints is not None:
        report.problems.extend(_check_checkpoints(report, checkpoints, entries, top))
    if index is not None:
        report.index_checked = True
        report.problems.extend(_check_index(db, index, events, chained, pending))
    report.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return report


def _check_checkpoints(report: ChainReport, check: CheckpointCheck, entries: dict[int, dict[str, Any]],
                       top: int) -> list[Problem]:
    """Signatures first; then the newest verified checkpoint beyond the chain's end (truncation) and the
    first one whose head differs from the chain's hash at its number (a rewrite)."""
    problems: list[Problem] = []
    verified = []
    newest_unverified = None
    for line in check.lines:
        cp = line.checkpoint
        if cp is None:
            problems.append(Problem(None, "?", "checkpoint", f"line {line.number} is not a checkpoint: {line.error}"))
            continue
        if cp.chain != check.chain:
            continue
        key_ = check.public_key(cp.kid)
        if key_ is None:
            newest_unverified = (line, cp)
            continue
        if not cp.verify(key_):
            problems.append(Problem(cp.seq, "?", "checkpoint", f"the checkpoint of {cp.time} (line {line.number}) "
                                    "has a bad signature: it was forged or altered"))
            continue
        verified.append(cp)
        newest_unverified = None
    if newest_unverified is not None:
        line, cp = newest_unverified
        problems.append(Problem(cp.seq, "?", "checkpoint", f"the newest checkpoint (line {line.number}) is signed "
                                f"by key {cp.kid!r}, which this node does not know"))
    report.checkpoints = len(verified)
    if verified:
        report.last_checkpoint = max(verified, key=lambda c: c.seq).to_json()
    beyond = [cp for cp in verified if cp.seq > top]
    if beyond:
        cp = max(beyond, key=lambda c: c.seq)
        problems.append(Problem(top + 1, "?", "truncated", f"the chain ends at event {top}, but the checkpoint of "
                                f"{cp.time} signed event {cp.seq}: the newest events were removed"))
    for cp in sorted(verified, key=lambda c: c.seq):
        entry = entries.get(cp.seq)
        if entry is not None and entry.get("h") != cp.head:
            problems.append(Problem(cp.seq, str(entry.get("ev")), "rewritten", f"its chain hash differs from the "
                                    f"one signed in the checkpoint of {cp.time}: the chain was rewritten"))
            break
    return problems


def _check_index(db: Any, check: IndexCheck, events: dict[str, dict[str, Any]], chained: dict[str, int],
                 pending: set[str]) -> list[Problem]:
    """Each event's stored index values against its content, and the posting lists against both."""
    problems: list[Problem] = []
    expected: dict[str, set[str]] = {}  # posting-list key -> event ids
    for eid, doc in events.items():
        if doc.get("res") is None:
            continue
        try:
            want = check.rebuild(doc).get("ix", {})
        except Exception as err:  # noqa: BLE001 - an event too damaged to index is reported
            problems.append(Problem(chained.get(eid), eid, "index", f"its search index cannot be rebuilt: {err}"))
            continue
        got = doc.get("ix") or {}
        if got != want:
            codes = sorted(c for c in set(got) | set(want) if got.get(c) != want.get(c))
            what = "patient index" if set(codes) & set(check.codes) else "search index"
            problems.append(Problem(chained.get(eid), eid, "index", f"its {what} differs from its content "
                                    f"({', '.join(codes)}): searches by these parameters are misled"))
        for k in keys_for(EVENTS, want, check.codes):
            expected.setdefault(k, set()).add(eid)
    prefix = reference_key(EVENTS, "")
    stored: dict[str, set[str]] = {}
    for k, listed in scan(db[POSTINGS], prefix):  # heads and their sealed segments
        stored.setdefault(k, set()).update(listed)
    for k, ids in sorted(expected.items()):
        for eid in sorted(ids - stored.get(k, set())):
            problems.append(Problem(chained.get(eid), eid, "index", f"missing from the patient index of "
                                    f"{k[len(prefix):]}: AuditEvent?patient= does not find it"))
    for k, ids in sorted(stored.items()):
        for eid in sorted(ids - expected.get(k, set())):
            if eid in events:
                problems.append(Problem(chained.get(eid), eid, "index", f"listed in the patient index of "
                                        f"{k[len(prefix):]}, whom it does not name"))
            elif eid not in pending:
                problems.append(Problem(None, eid, "index", f"the patient index of {k[len(prefix):]} lists an "
                                        "event that does not exist"))
    return problems


def _changed(n: int, eid: str, got: str, doc: dict[str, Any], by_digest: dict[Any, int]) -> Problem:
    other = by_digest.get(got)
    res_id = (doc.get("res") or {}).get("id")
    if other is not None and other != n:
        return Problem(n, eid, "reordered", f"holds what was sealed as event {other}")
    if res_id is not None and res_id != eid:
        return Problem(n, eid, "reordered", f"holds the content of AuditEvent/{res_id}")
    return Problem(n, eid, "edited", "its content differs from what was sealed")
