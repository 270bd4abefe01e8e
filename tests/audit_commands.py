"""Counting the audit trail's database commands on the request path (pymongo command monitoring): every command
on the audit collections except the background sealer's (it works off the request path). Registered when this
module is imported, so test modules import it before any client of theirs exists. Used by
tests/integration/test_audit_group_commit.py and test_audit_spool.py."""

from __future__ import annotations

import threading
from typing import Any

from pymongo import monitoring

AUDIT = ("_audit", "AuditEvent")


class AuditCommands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.counting = False
        self.count = 0
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.counting or threading.current_thread().name == "ehc-audit-sealer":
            return
        coll = event.command.get(event.command_name)
        if isinstance(coll, str) and coll.startswith(AUDIT):
            with self._lock:
                self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


LISTENER = AuditCommands()
monitoring.register(LISTENER)


def amortised(app: Any, clients: int, per_client: int, pid: str, *, after: Any = None) -> float:
    """Audit commands per request while `clients` threads each read a Patient `per_client` times; `after()`
    runs (still counted) once they are done."""
    errors: list[Any] = []
    barrier = threading.Barrier(clients)

    def work() -> None:
        client = app.test_client()
        barrier.wait()
        for _ in range(per_client):
            r = client.get(f"/fhir/Patient/{pid}")
            if r.status_code != 200:
                errors.append(r.status_code)

    LISTENER.count = 0
    LISTENER.counting = True
    try:
        threads = [threading.Thread(target=work) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if after is not None:
            after()
    finally:
        LISTENER.counting = False
    assert errors == []
    return LISTENER.count / (clients * per_client)
