"""The round-trip budget of the k6 CRUD iteration: database commands per request, counted with pymongo
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
    "delete_observation": (6, None),
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
def costs(rt_app: Any) -> dict[str, list[list[Any]]]:
    svc = rt_app.extensions["ehc"]
    client = rt_app.test_client()
    reg = register_client(auth_state(svc).store, name="round trips", scopes="system/*.cruds", province="11")
    basic = base64.b64encode(f"{reg['client_id']}:{reg['client_secret']}".encode()).decode()
    tok = client.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
                      headers={"Authorization": f"Basic {basic}"})
    assert tok.status_code == 200, tok.get_data(as_text=True)
    headers = {"Authorization": f"Bearer {tok.get_json()['access_token']}", "Accept": "application/fhir+json"}
    return measure_crud(client, headers, svc.handle.db.name)


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
