"""The round-trip budget of the load scenario's CRUD iteration: database commands per request, counted with pymongo
command monitoring (tests/round_trips.py), in steady state, auth and audit on, audit writes not counted.

The issue's budgets: read <= 1, search by identifier <= 2, update <= 3, create Observation <= 3, create
Patient of a new resident with its card issued <= 8. Where a budget is not met yet, the ceiling is today's
count, so that a change adding a round trip fails here; docs/benchmarks/round-trips.md lists the commands.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest

from app.auth.plugin import auth_state
from app.auth.registration import register_client
from app.config import Settings
from tests.round_trips import OPERATIONS, counter, measure_crud, steady

# operation -> (ceiling asserted, the budget or None). Where the budget is met the ceiling is the
# budget; where it is not, the ceiling is the count measured after the last reduction, so a change that adds a
# round trip fails (see docs/benchmarks/round-trips.md for what is left and where).
CEILINGS: dict[str, tuple[int, int | None]] = {
    "create_patient": (7, 8),  # lease, claim insert, keys, insert, names, lease release, card (a new resident: no read)
    "read_patient": (1, 1),
    "update_patient": (4, 3),  # read, history slot, replace, name postings (the name changed)
    "search_patient_identifier": (2, 2),
    "create_observation": (3, 3),
    "search_observation": (2, None),
    "delete_observation": (8, None),  # its referrers are looked up again after the tombstone (2 commands)
}


@pytest.fixture(scope="module")
def rt_app(settings: Settings) -> Any:
    counter()  # before any client of the app exists
    from app import create_app

    flask_app = create_app(replace(settings, auth_required=True))
    flask_app.testing = True
    yield flask_app
    flask_app.extensions["ehc"].handle.close()


@pytest.fixture(scope="module")
def headers(rt_app: Any) -> dict[str, str]:
    svc = rt_app.extensions["ehc"]
    reg = register_client(auth_state(svc).store, name="round trips", scopes="system/*.cruds", province="11")
    basic = base64.b64encode(f"{reg['client_id']}:{reg['client_secret']}".encode()).decode()
    tok = rt_app.test_client().post("/oauth/token", data={"grant_type": "client_credentials",
                                                          "scope": "system/*.cruds"},
                                    headers={"Authorization": f"Basic {basic}"})
    assert tok.status_code == 200, tok.get_data(as_text=True)
    return {"Authorization": f"Bearer {tok.get_json()['access_token']}", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def costs(rt_app: Any, headers: dict[str, str]) -> dict[str, list[list[Any]]]:
    return measure_crud(rt_app.test_client(), headers, rt_app.extensions["ehc"].handle.db.name)


def test_every_operation_was_measured(costs: dict[str, list[list[Any]]]) -> None:
    assert set(costs) == set(OPERATIONS)
    assert all(len(runs) == 5 for runs in costs.values())
    # the listener sees the app's commands at all: a read costs at least one
    assert len(steady(costs["read_patient"])) >= 1


@pytest.mark.parametrize("op", OPERATIONS)
def test_round_trips_within_ceiling(costs: dict[str, list[list[Any]]], op: str) -> None:
    ceiling, _budget = CEILINGS[op]
    cheapest = steady(costs[op])
    assert len(cheapest) <= ceiling, f"{op}: {len(cheapest)} round trips > {ceiling}: " + "; ".join(map(str, cheapest))


@pytest.fixture(scope="module")
def many(rt_app: Any, headers: dict[str, str]) -> str:
    """A patient with 40 Observations (the id)."""
    web = rt_app.test_client()
    post = {**headers, "Content-Type": "application/fhir+json"}
    pid = web.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"text": "多页"}]},
                   headers=post).json["id"]
    for day in range(1, 41):
        r = web.post("/fhir/Observation", headers=post, json={
            "resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
            "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"2026-01-{day % 28 + 1:02d}"})
        assert r.status_code == 201
    web.get(f"/fhir/Observation?patient={pid}&_count=10", headers=headers)  # warm: caches, the posting list rolled
    return str(pid)


def _page(web: Any, pid: str, headers: dict[str, str], db: str) -> tuple[Any, list[Any]]:
    with counter().recording(db) as commands:
        page = web.get(f"/fhir/Observation?patient={pid}&_count=10&_sort=-date", headers=headers)
    assert page.status_code == 200 and page.json["total"] == 40 and len(page.json["entry"]) == 10
    return page, commands


@pytest.mark.parametrize("auth", [True, False])
def test_a_search_of_many_pages_reads_each_candidate_once(rt_app: Any, app: Any, headers: dict[str, str],
                                                          many: str, auth: bool) -> None:
    """A patient's 40 Observations, a page of 10: the posting list, then each of the 40 once, for the page and
    the total alike (they were read twice: 2 x 40), and nothing per entry on the way out (with auth off, the
    disclosure gate read each entry's province for a decision it does not make)."""
    web = (rt_app if auth else app).test_client()
    _, commands = _page(web, many, headers if auth else {"Accept": "application/fhir+json"},
                        rt_app.extensions["ehc"].handle.db.name)
    reads = [c for c in commands if c.collection == "Observation"]
    one_by_one = not rt_app.extensions["ehc"].handle.supports_secondary_indexes  # FerretDB; MongoDB: one $in
    assert len(reads) == (40 if one_by_one else 1), "; ".join(map(str, commands))
    assert len(commands) <= len(reads) + 2, "; ".join(map(str, commands))  # + the list's head and segment


def test_where_the_id_index_serves_in_candidates_are_read_in_one_command(rt_app: Any, headers: dict[str, str],
                                                                          many: str) -> None:
    """MongoDB's branch (one $in of up to 500 ids), run here against FerretDB, where $in works but scans: the
    same page and total as the one-by-one reads, in one command instead of 40."""
    handle = rt_app.extensions["ehc"].handle
    web = rt_app.test_client()
    expected, _ = _page(web, many, headers, handle.db.name)
    forced = not handle.supports_secondary_indexes  # on MongoDB the branch is taken anyway
    handle.__dict__["supports_secondary_indexes"] = True  # the cached_property, as MongoDB answers it
    try:
        page, commands = _page(web, many, headers, handle.db.name)
    finally:
        if forced:
            del handle.__dict__["supports_secondary_indexes"]
    reads = [c for c in commands if c.collection == "Observation"]
    assert [str(c) for c in reads] == ["find Observation {_id}"]
    assert [e["fullUrl"] for e in page.json["entry"]] == [e["fullUrl"] for e in expected.json["entry"]]


def test_a_vread_reads_the_current_version_once(rt_app: Any, headers: dict[str, str]) -> None:
    """vread judges the caller on the current version and answers from it when it is the one asked for: one
    read, as a read; an older version adds the history lookup."""
    web = rt_app.test_client()
    post = {**headers, "Content-Type": "application/fhir+json"}
    pid = web.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"text": "版本"}]},
                   headers=post).json["id"]
    assert web.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "name": [{"text": "版本二"}]},
                   headers=post).status_code == 200
    db = rt_app.extensions["ehc"].handle.db.name
    for vid, expected in (("2", ["find Patient {_id}"]), ("1", ["find Patient {_id}", "find Patient_history {_id}"])):
        web.get(f"/fhir/Patient/{pid}/_history/{vid}", headers=headers)  # warm
        with counter().recording(db) as commands:
            r = web.get(f"/fhir/Patient/{pid}/_history/{vid}", headers=headers)
        assert r.status_code == 200 and r.headers["ETag"] == f'W/"{vid}"'
        assert [str(c) for c in commands] == expected, \
            [str(c) for c in commands]
