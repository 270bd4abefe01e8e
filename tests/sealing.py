"""Sealing in tests: `seal_everything(sealer)` returns once every audit event pending when it was called is sealed.

`Sealer.seal_all` gives up (returns None, or the passes it made so far) when another pass holds the sealer's lease
longer than its `wait_seconds` (5 s): in a test, the app's background seal loop (app.audit.plugin.SealLoop), which
on a loaded machine (`pytest -n 2`) can hold it that long, or keep taking it again while it works off a backlog. A
test that then read the trail did not find the events it had just caused (test_audit_third_review.py failed so
once). This helper makes passes until a complete run ends with nothing left (no pass reports `more`) and none of
the events pending at the start is pending any more, waiting for the lease as long as it takes, up to `timeout`;
then it fails loudly, naming who holds the lease. Tests call it instead of `seal_all` (a guard test checks that):
tests/integration/test_audit_sealing_helper.py."""

from __future__ import annotations

import time
from typing import Any

from app.audit import pending
from app.audit.chain import PENDING
from app.audit.sealer import LEASE, Sealer, SealResult

TIMEOUT = 60.0  # seconds: far beyond any pass (a pass holds the lease at most its 10 s), but bounded


def _merge(total: SealResult | None, result: SealResult) -> SealResult:
    if total is None:
        return result
    total.sealed += result.sealed
    total.recovered += result.recovered
    total.head, total.waiting, total.more = result.head, result.waiting, result.more
    total.seconds += result.seconds
    total.checkpoint = total.checkpoint or result.checkpoint
    return total


def _pending_events(sealer: Sealer, ids: set[Any]) -> set[Any]:
    """Which of `ids` are still pending (a scan of the batches: fine for a test's trail)."""
    if not ids:
        return set()
    return ids & set(pending.record_ids(sealer.pending))


def seal_everything(sealer: Sealer, timeout: float = TIMEOUT, wait_seconds: float = 5.0) -> SealResult:
    """Seal until every event pending (or spooled on this node) now is sealed; returns the passes of this call,
    merged (`sealed` counts only what this caller sealed: another sealer may have sealed the rest). Raises
    AssertionError after `timeout` seconds without that."""
    sealer.writer.settle()  # what this node's processes spooled is in pending now
    todo = {str(r["_id"]) for b in sealer.pending.find({}) for r in pending.records_of(b) if r.get("kind") == "event"}
    deadline = time.monotonic() + timeout
    total: SealResult | None = None
    busy = 0
    while True:
        left = deadline - time.monotonic()
        result = sealer.seal_all(wait_seconds=max(0.0, min(wait_seconds, left)))
        if result is not None:
            total = _merge(total, result)
        else:
            busy += 1
        complete = result is not None and not result.more  # seal_all's last pass found nothing left over
        if complete and not (todo := _pending_events(sealer, todo)):
            assert total is not None
            return total
        if time.monotonic() >= deadline:
            holder = sealer.leases.col.find_one({"_id": LEASE})
            raise AssertionError(
                f"seal_everything: the audit events pending when it was called were not all sealed within "
                f"{timeout:g} s: {len(todo)} still pending, {pending.count(sealer.pending)} record(s) in "
                f"{PENDING}; the lease {LEASE!r} was busy on {busy} attempt(s) (holder now: {holder}); "
                f"passes made: {total}")
        time.sleep(0.05)
