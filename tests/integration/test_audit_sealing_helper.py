"""tests/sealing.py: tests seal with `seal_everything`, which waits out a busy sealer lease (bounded) instead of
giving up as `Sealer.seal_all` does. test_audit_third_review.py's unauthenticated-attempt test failed once under
`pytest -n 2`: the app's background seal loop held the lease longer than seal_all's 5 s (and than the 2 s the
AuditEvent read waits), so the trail was read before the 401's event was sealed."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.audit import build_trail, pending
from app.audit.chain import EVENTS, PENDING
from app.audit.sealer import LEASE
from app.core.access import AccessRecord, Principal
from tests.sealing import seal_everything

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fresh(mongo_server: str, settings: Any) -> Iterator[Any]:
    from app.services import build_services

    uri = mongo_server.rstrip("/") + "/t_audit_sealing_" + uuid.uuid4().hex[:8]
    svc = build_services(settings.with_overrides(mongodb_uri=uri))
    yield svc
    svc.handle.client.drop_database(svc.handle.db.name)
    svc.handle.close()


@contextmanager
def lease_held(sealer: Any, seconds: float) -> Iterator[None]:
    """The sealer's lease held by another thread (as the background loop holds it during a pass) for `seconds`."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with sealer.leases.hold(LEASE, wait_seconds=5.0):
            taken.set()
            done.wait(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(5.0)
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_seal_everything_waits_for_a_busy_lease_where_seal_all_gives_up(fresh: Any) -> None:
    writer, sealer = build_trail(fresh)
    eid = writer.write(AccessRecord("read", "Patient", ["p1"], principal=Principal(client_id="c")))
    started = time.monotonic()
    with lease_held(sealer, 1.5):  # released after 1.5 s
        assert sealer.seal_all(wait_seconds=0.3) is None  # what the tests did: nothing sealed, and no error
        assert pending.find(fresh.handle.db[PENDING], eid) is not None
        result = seal_everything(sealer, wait_seconds=0.3)
    assert time.monotonic() - started >= 1.4  # it waited for the lease
    assert result.sealed == 1 and not result.more
    assert fresh.handle.db[EVENTS].find_one({"_id": eid}) is not None
    assert pending.find(fresh.handle.db[PENDING], eid) is None


def test_seal_everything_fails_loudly_when_the_lease_never_comes_free(fresh: Any) -> None:
    writer, sealer = build_trail(fresh)
    writer.write(AccessRecord("read", "Patient", ["p1"], principal=Principal(client_id="c")))
    with lease_held(sealer, 3.0), pytest.raises(AssertionError, match=r"not all sealed within 1 s.*'audit-seal'"):
        seal_everything(sealer, timeout=1.0, wait_seconds=0.2)


def test_seal_everything_does_nothing_when_nothing_is_pending(fresh: Any) -> None:
    _writer, sealer = build_trail(fresh)
    result = seal_everything(sealer)
    assert (result.sealed, result.more) == (0, False)


def test_tests_seal_with_the_helper() -> None:
    """A bare `seal_all()` (or `seal()` of the app's sealer) in a test gives up silently when the lease is busy."""
    bare = re.compile(r"\.seal_all\(|extensions\[\"audit\"\]\.sealer\.seal\(")
    found = [f"{p.relative_to(TESTS)}:{n}" for p in sorted(TESTS.rglob("*.py")) if p.name != "sealing.py"
             and p != Path(__file__).resolve()
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if bare.search(line)]
    assert not found, "seal with tests.sealing.seal_everything: " + ", ".join(found)
