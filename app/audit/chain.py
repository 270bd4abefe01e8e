"""The SM3 hash chain over audit events (GB/T 32905 SM3) and its verification.

Writers leave events in `_audit_pending` (random ids). The sealer (app.audit.sealer), one at a time across
processes, gives each the next sequence number n, stores it as an AuditEvent and appends a chain entry
`{_id: key(n), seq, ev, d, h}` to `_audit_chain`:

    d(n) = SM3(canonical(event n))            canonical = JSON, sorted keys, no spaces, UTF-8
    h(n) = SM3(h(n-1) || d(n))                h(0) = 32 zero bytes

Numbers are handed out only by sealing, so the chain has no gaps by construction: a missing number is a
removal. `verify(db)` recomputes every d(n) from the stored events and every h(n) from the chain, and names
each event that was edited, removed, reordered, sealed twice, or added outside the chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.crypto.sm3 import sm3

EVENTS = "AuditEvent"
CHAIN = "_audit_chain"
STATE = "_audit_state"
PENDING = "_audit_pending"  # one marker per event not sealed yet (the intent of a write in flight)
HEAD_ID = "audit-head"  # {_id, seq, h}: the last sealed event and its chain hash
GENESIS = bytes(32)
HASHED_FIELDS = ("vid", "del", "prov", "res")


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
    kind: str  # edited | removed | reordered | duplicate | chain-edited | not-chained | head
    detail: str

    def __str__(self) -> str:
        where = f"event {self.seq} (AuditEvent/{self.event_id})" if self.seq else f"AuditEvent/{self.event_id}"
        return f"{where}: {self.kind}: {self.detail}"


@dataclass
class ChainReport:
    sealed: int = 0  # length of the chain
    head: str = GENESIS.hex()  # h of the last sealed event
    pending: int = 0  # written but not sealed yet (events, and intents of writes in flight)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "sealed": self.sealed, "head": self.head,
                "pending": self.pending, "first_bad": str(self.first) if self.first else None,
                "problems": [str(p) for p in self.problems]}


def verify(db: Any) -> ChainReport:
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
    events = {str(doc["_id"]): doc for doc in db[EVENTS].find({}, {"ix": 0, "so": 0})}
    pending = {str(m["_id"]) for m in db[PENDING].find({}, {"_id": 1})}
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
    report.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return report


def _changed(n: int, eid: str, got: str, doc: dict[str, Any], by_digest: dict[Any, int]) -> Problem:
    other = by_digest.get(got)
    res_id = (doc.get("res") or {}).get("id")
    if other is not None and other != n:
        return Problem(n, eid, "reordered", f"holds what was sealed as event {other}")
    if res_id is not None and res_id != eid:
        return Problem(n, eid, "reordered", f"holds the content of AuditEvent/{res_id}")
    return Problem(n, eid, "edited", "its content differs from what was sealed")
