"""Counting database round trips per FHIR request with pymongo command monitoring.

A CommandListener registered globally (pymongo.monitoring.register) sees every command of every MongoClient
created after it: the app's DatabaseHandle client and the auth store's mongoengine client alike. It counts
only the commands issued by the thread that serves the request (a Flask test client runs the request in the
calling thread), so the background audit sealer and other timers are not counted; commands on the audit
collections are left out as well (the audit trail's writes are budgeted separately, amortised by group
commit). Used by tests/integration/test_round_trips.py and scripts/bench_round_trips.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pymongo import monitoring

from app.synthetic import check_char

FJ = "application/fhir+json"
ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
LOINC = "http://loinc.org"
AUDIT_PREFIXES = ("_audit", "AuditEvent")


@dataclass(frozen=True)
class Command:
    name: str  # find, insert, update, delete, getMore, findAndModify, ...
    collection: str
    detail: str  # the shape of the filter: "_id", "_id+token", ...

    def __str__(self) -> str:
        return " ".join(x for x in (self.name, self.collection, f"{{{self.detail}}}" if self.detail else "") if x)


def _collection(event: monitoring.CommandStartedEvent) -> str:
    cmd = event.command
    if event.command_name == "getMore":
        return str(cmd.get("collection", ""))
    value = cmd.get(event.command_name)
    return value if isinstance(value, str) else ""


def _detail(event: monitoring.CommandStartedEvent) -> str:
    cmd = event.command
    flt: Any = None
    if event.command_name in ("find", "count", "findAndModify", "aggregate"):
        flt = cmd.get("filter", cmd.get("query"))
    elif event.command_name == "update" and cmd.get("updates"):
        first = cmd["updates"][0]
        flt = first.get("q")
        op = ",".join(k for k in (first.get("u") or {}) if k.startswith("$")) or "replace"
        return f"{_keys(flt)} {op}".strip() + (f" x{len(cmd['updates'])}" if len(cmd["updates"]) > 1 else "")
    elif event.command_name == "delete" and cmd.get("deletes"):
        flt = cmd["deletes"][0].get("q")
    elif event.command_name == "insert":
        docs = cmd.get("documents") or []
        return f"{len(docs)} doc" + ("s" if len(docs) != 1 else "")
    return _keys(flt)


def _keys(flt: Any) -> str:
    if not isinstance(flt, dict):
        return ""
    return "+".join(sorted(flt)) if flt else "all"


def is_audit(command: Command, event: monitoring.CommandStartedEvent | None = None) -> bool:
    if command.collection.startswith(AUDIT_PREFIXES):
        return True
    # the audit trail's own lease and AuditEvent posting lists
    if event is not None and command.collection in ("_leases", "_keys"):
        text = str(event.command)
        return "audit-seal" in text or "'AuditEvent|" in text
    return False


class CommandCounter(monitoring.CommandListener):
    """Records the commands of the armed thread on one database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[str, list[Command]]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        armed = self._armed.get(threading.get_ident())
        if armed is None or event.database_name != armed[0]:
            return
        command = Command(event.command_name, _collection(event), _detail(event))
        if not is_audit(command, event):
            armed[1].append(command)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    @contextmanager
    def recording(self, db_name: str) -> Iterator[list[Command]]:
        found: list[Command] = []
        key = threading.get_ident()
        with self._lock:
            self._armed[key] = (db_name, found)
        try:
            yield found
        finally:
            with self._lock:
                self._armed.pop(key, None)


_COUNTER: CommandCounter | None = None


def counter() -> CommandCounter:
    """The process-wide listener; register it before the app's clients are created."""
    global _COUNTER
    if _COUNTER is None:
        _COUNTER = CommandCounter()
        monitoring.register(_COUNTER)
    return _COUNTER


# -- the load scenario's CRUD iteration, request by request ------------------------------------------------------------

class Residents:
    """Unique valid resident ID numbers (GB 11643) with the sex and birth date they encode."""

    def __init__(self) -> None:
        self.n = int(uuid.uuid4().int % 20000)

    def next(self) -> tuple[str, str, str]:
        self.n += 1
        born = date(1950, 1, 1) + timedelta(days=self.n % 20000)
        seq = 1 + (self.n // 20000 + uuid.uuid4().int) % 499 * 2  # odd: male
        body = f"110101{born:%Y%m%d}{seq:03d}"
        return body + check_char(body), "male", born.isoformat()


def patient_resource(idno: str, gender: str, birth: str, family: str, pid: str | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Patient", "identifier": [{"system": ID_SYSTEM, "value": idno}],
                         "active": True, "name": [{"use": "official", "family": family, "given": ["Load"]}],
                         "gender": gender, "birthDate": birth}
    if pid:
        r["id"] = pid
    return r


def observation_resource(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-01-01T08:00:00Z",
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
    }


OPERATIONS = ("create_patient", "read_patient", "update_patient", "search_patient_identifier",
              "create_observation", "search_observation", "delete_observation")


def crud_iteration(client: Any, headers: dict[str, str], residents: Residents,
                   measure: Callable[[str, Callable[[], Any]], Any]) -> None:
    """One CRUD iteration of the load scenario through a Flask test client; measure(op, call) runs each request."""
    idno, gender, birth = residents.next()

    def check(resp: Any, *ok: int) -> dict[str, Any]:
        assert resp.status_code in ok, (resp.status_code, resp.get_data(as_text=True)[:500])
        body: dict[str, Any] = resp.get_json() or {}
        return body

    created = check(measure("create_patient", lambda: client.post(
        "/fhir/Patient", json=patient_resource(idno, gender, birth, "Bench"), headers=headers)), 201, 200)
    pid = created["id"]
    check(measure("read_patient", lambda: client.get(f"/fhir/Patient/{pid}", headers=headers)), 200)
    check(measure("update_patient", lambda: client.put(
        f"/fhir/Patient/{pid}", json=patient_resource(idno, gender, birth, "BenchUpdated", pid), headers=headers)),
        200)
    found = check(measure("search_patient_identifier", lambda: client.get(
        "/fhir/Patient", query_string={"identifier": f"{ID_SYSTEM}|{idno}"}, headers=headers)), 200)
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [pid]
    obs = check(measure("create_observation", lambda: client.post(
        "/fhir/Observation", json=observation_resource(pid), headers=headers)), 201)
    oid = obs["id"]
    found = check(measure("search_observation", lambda: client.get(
        "/fhir/Observation", query_string={"patient": pid, "code": f"{LOINC}|8867-4"}, headers=headers)), 200)
    assert oid in [e["resource"]["id"] for e in found.get("entry", [])]
    check(measure("delete_observation", lambda: client.delete(f"/fhir/Observation/{oid}", headers=headers)),
          200, 204)


def measure_crud(client: Any, headers: dict[str, str], db_name: str, rounds: int = 5
                 ) -> dict[str, list[list[Command]]]:
    """Run `rounds` CRUD iterations (after one warm-up); the commands of every request, per operation."""
    rec = counter()
    residents = Residents()
    seen: dict[str, list[list[Command]]] = {op: [] for op in OPERATIONS}

    def unmeasured(_op: str, call: Callable[[], Any]) -> Any:
        return call()

    def measured(op: str, call: Callable[[], Any]) -> Any:
        with rec.recording(db_name) as found:
            resp = call()
        seen[op].append(list(found))
        return resp

    crud_iteration(client, headers, residents, unmeasured)  # warm-up: caches, first-use lookups
    for _ in range(rounds):
        crud_iteration(client, headers, residents, measured)
    return seen


def steady(runs: list[list[Command]]) -> list[Command]:
    """The steady-state cost of an operation: its cheapest run (a periodic refresh in one run is amortised)."""
    return min(runs, key=len)
