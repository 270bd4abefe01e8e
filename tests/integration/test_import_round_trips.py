"""Database commands of one `ehc import` row (tests/round_trips.py counts them): a row of a new resident costs
the checks that find it unknown plus the write of POST /fhir/Patient; a row the index holds already and that
adds nothing ('unchanged', as in every row of a rerun) costs one claim read per identifier and one Patient read,
and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from app.mpi.importer import Importer, csv_patient
from tests.integration.test_import import row
from tests.integration.test_mpi_registration import id_number
from tests.round_trips import counter


@pytest.fixture(scope="module")
def counted_app(settings: Settings) -> Any:
    counter()  # before any client of the app exists
    from app import create_app

    flask_app = create_app(settings)
    yield flask_app
    flask_app.extensions["ehc"].handle.close()


@pytest.fixture(scope="module")
def importer(counted_app: Any) -> Importer:
    from app.mpi.plugin import setup

    svc = counted_app.extensions["ehc"]
    return Importer(svc, setup(svc))


def commands(importer: Importer, n: int, item: dict[str, Any]) -> tuple[str, list[str]]:
    with counter().recording(importer.svc.handle.db.name) as found:
        result = importer.process(n, item)
    return result.outcome, [str(c) for c in found]


NEW_ROW_CEILING = 10  # one claim read, then POST /fhir/Patient's write of a new resident with two identifiers


def test_new_row_then_the_same_row_again(importer: Importer) -> None:
    def item(mrn: str, name: str, born: str, seq: int) -> dict[str, Any]:
        return csv_patient(row("rt-hosp", mrn, name, id_number("110101", born, seq), gender="男", birth_date=born),
                           importer.registry)

    assert commands(importer, 1, item("W1", "严零", "1979-09-09", 91))[0] == "created"  # warm-up
    outcome, new = commands(importer, 2, item("R1", "严一", "1979-09-10", 93))
    assert outcome == "created"
    assert len(new) <= NEW_ROW_CEILING, new
    assert [c for c in new if c.split()[0] == "find"] == ["find mpi_claims {_id}"], new  # stops at the unknown one
    outcome, again = commands(importer, 2, item("R1", "严一", "1979-09-10", 93))
    assert outcome == "unchanged"
    assert again == ["find mpi_claims {_id}", "find mpi_claims {_id}", "find Patient {_id}"]
