"""The client smoke matrix: HAPI FHIR's generic client (strict parser, JSON and XML), fhirpy, fhirclient (strict
R4 models) and fhir-kit-client each run create, read, update, vread, history, search, transaction, paging,
compartment search, XML (where the client has it) and delete against every writable resource type of a live
server with auth on (a system token with every scope). Every cell must pass; what a client cannot do is "n/a"
with its reason, and those reasons are checked here too, so a client cannot quietly skip a step."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.client_matrix import (
    WRITABLE,
    build_fhir_kit,
    build_hapi,
    compartment_params,
    failures,
    not_supported,
    run_fhir_kit,
    run_hapi,
    spec,
)
from tests.client_matrix_python import BUNDLE_CREATE, fhirclient_matrix, fhirpy_matrix
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import patient, stored_token

OUTSIDE = "not in the patient compartment"
NO_XML = {"xml-read", "xml-create"}


@pytest.fixture(scope="module")
def matrix(live: str, svc: Any) -> dict[str, Any]:
    token = stored_token(svc, "system/*.cruds", expires_in=1800)
    return spec(f"{live}/fhir", token, patient(svc))


def check(cells: dict[str, dict[str, str]], client: str, json_only: str | None,
          **also: str) -> None:
    problems = failures(cells)
    assert not problems, f"{client}: {len(problems)} failing cells:\n" + "\n".join(problems[:200])
    expected = {"compartment": {OUTSIDE}}
    if json_only:
        expected.update({step: {json_only} for step in NO_XML})
    expected.update({step: {why} for step, why in also.items()})
    assert not_supported(cells) == expected
    outside = sum(1 for row in cells.values() if row["compartment"] != "ok")
    assert outside == len(set(WRITABLE) - set(compartment_params()))


def test_every_compartment_search_has_something_to_find(matrix: dict[str, Any]) -> None:
    in_compartment = [e for e in matrix["types"] if e["compartment"]]
    assert len(in_compartment) == len(set(WRITABLE) & set(compartment_params())) == 66
    assert [e["type"] for e in in_compartment if not e["member"]] == ["Patient"]  # Patient/{id}/Patient: itself


def test_fhirpy(matrix: dict[str, Any]) -> None:
    check(fhirpy_matrix(matrix), "fhirpy", "fhirpy reads and writes JSON only", create=BUNDLE_CREATE[5:])


def test_fhirclient(matrix: dict[str, Any]) -> None:
    check(fhirclient_matrix(matrix), "fhirclient", "fhirclient reads and writes JSON only")


@pytest.mark.skipif(shutil.which("java") is None or shutil.which("mvn") is None,
                    reason="HAPI's client needs Java 17 and Maven")
def test_hapi_generic_client_strict(matrix: dict[str, Any], tmp_path: Path) -> None:
    assert build_hapi()
    check(run_hapi(matrix, tmp_path), "HAPI", None)


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                    reason="fhir-kit-client needs node and npm")
def test_fhir_kit_client(matrix: dict[str, Any], tmp_path: Path) -> None:
    assert build_fhir_kit()
    check(run_fhir_kit(matrix, tmp_path), "fhir-kit-client", "fhir-kit-client reads and writes JSON only")
