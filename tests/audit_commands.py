"""Counting the audit trail's database commands on the request path (pymongo command monitoring): every command
on the audit collections except the background sealer's (it works off the request path). Registered when this
module is imported, so test modules import it before any client of theirs exists (`audited_app` makes a web app
whose client it sees). Used by tests/integration/test_audit_group_commit.py and test_audit_spool.py."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


@contextmanager
def audited_app(mongo_server: str, data_dir: Path, *, audit_spool: bool) -> Iterator[tuple[Any, Any]]:
    """(app, services) of a web app on a database of its own, auth off; dropped afterwards."""
    from app import create_app
    from app.config import Settings

    uri = mongo_server.rstrip("/") + "/t_audit_app_" + uuid.uuid4().hex[:8]
    app = create_app(Settings(mongodb_uri=uri, province="11", data_dir=data_dir, auth_required=False,
                              audit_spool=audit_spool))
    app.testing = True
    svc = app.extensions["ehc"]
    try:
        yield app, svc
    finally:
        svc.handle.client.drop_database(svc.handle.db.name)
        svc.handle.close()
