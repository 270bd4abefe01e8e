"""`ehc import` judges a row as POST /fhir/Patient judges it, never loses a row of a malformed CSV silently, and a
rerun changes nothing also for rows whose identifiers the master index does not know (docs/mpi.md, "Bulk import")."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.mpi.importer import Importer
from tests.integration.test_import import _cli_import, read_report, row, write_csv
from tests.integration.test_mpi_registration import ID_SYS, id_number

FJ = "application/fhir+json"
HEADER = "source_system,mrn,name,gender,birth_date,id_type,id_number,phone,address\n"


@pytest.fixture()
def importer(services: Any) -> Importer:
    from app.fhir.validation import Validator
    from app.mpi.plugin import setup

    validator = Validator(services.profiles_dir)
    return Importer(services, setup(services), lambda r: [i.diagnostics for i in validator.issues(r, "Patient")])


def post(client: Any, body: dict[str, Any]) -> Any:
    return client.post("/fhir/Patient", data=json.dumps(body, ensure_ascii=False), content_type=FJ)


def run_ndjson(importer: Importer, tmp_path: Path, resources: list[dict[str, Any]], batch: int = 1,
               workers: int = 1) -> list[dict[str, Any]]:
    src = tmp_path / f"in-{uuid.uuid4().hex[:8]}.ndjson"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in resources), encoding="utf-8")
    report = tmp_path / f"report-{uuid.uuid4().hex[:8]}.ndjson"
    importer.batch_size = batch
    importer.run(src, report, progress=False, workers=workers)
    return read_report(report)


# -- 1. a row that contradicts the resident its identifiers name: refused as POST refuses it ----------------------

@pytest.mark.parametrize("batch", [1, 500])
@pytest.mark.parametrize("differs", ["name", "birth date, by record number only"])
def test_a_row_contradicting_the_registered_resident_is_rejected_as_post_rejects_it(
        importer: Importer, client: Any, tmp_path: Path, services: Any, batch: int, differs: str) -> None:
    """The row carries the record's own identifiers, so it adds nothing to it; it was reported `unchanged` without
    the registration check that POST makes (409)."""
    importer.batch_size = batch
    tag = f"{batch}-{len(differs)}"
    if differs == "name":
        number = id_number("110101", "1970-02-02", 11 + batch % 7 * 2)  # odd: male
        first = row(f"par-{tag}", "M1", "许一", number, gender="男", birth_date="1970-02-02")
        second = {**first, "name": "王五"}
        body = {"resourceType": "Patient", "name": [{"text": "王五"}], "gender": "male", "birthDate": "1970-02-02",
                "identifier": [{"system": ID_SYS, "value": number},
                               {"system": f"urn:ehc:mrn:par-{tag}", "value": "M1"}]}
    else:
        first = row(f"par-{tag}", "Y1", "许二", gender="女", birth_date="1971-03-03")
        second = {**first, "birth_date": "1999-09-09"}
        body = {"resourceType": "Patient", "name": [{"text": "许二"}], "gender": "female", "birthDate": "1999-09-09",
                "identifier": [{"system": f"urn:ehc:mrn:par-{tag}", "value": "Y1"}]}
    importer.run(write_csv(tmp_path / "a.csv", [first]), tmp_path / "r1.csv", progress=False)
    created = read_report(tmp_path / "r1.csv")[0]
    assert created["outcome"] == "created", created
    vid = services.repo.get_doc("Patient", created["patient_id"])["vid"]
    answer = post(client, body)
    assert answer.status_code == 409, answer.get_data(as_text=True)
    diagnostics = [i["diagnostics"] for i in answer.get_json()["issue"]]
    importer.run(write_csv(tmp_path / "b.csv", [second]), tmp_path / "r2.csv", progress=False)
    refused = read_report(tmp_path / "r2.csv")[0]
    assert refused["outcome"] == "rejected" and refused["reason"].startswith("409 "), refused
    assert all(d in refused["reason"] for d in diagnostics), (refused["reason"], diagnostics)
    assert refused["patient_id"] == "" and services.repo.get_doc("Patient", created["patient_id"])["vid"] == vid
    # the row as it was first imported is still unchanged
    importer.run(tmp_path / "a.csv", tmp_path / "r3.csv", progress=False)
    assert read_report(tmp_path / "r3.csv")[0]["outcome"] == "unchanged"


# -- 2, 3. a CSV whose quotes do not close -------------------------------------------------------------------------

def test_an_unclosed_quote_stops_the_import_at_its_line_and_the_rerun_finishes(
        tmp_path: Path, settings: Any, services: Any, monkeypatch: Any) -> None:
    """The quote opened on line 3 swallowed every row after it (the report listed 2 of 201 rows, exit 0)."""
    lines = [f"quo-d,D{i},王{i % 10}五,男,1980-01-01,,,," for i in range(200)]
    lines.insert(1, 'quo-d,"DX,坏行,男,1980-01-01,,,,')  # line 3 of the file: an opening quote never closed
    src = tmp_path / "in.csv"
    src.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    report = tmp_path / "r1.csv"
    stopped = _cli_import(settings, monkeypatch, str(src), "--report", str(report))
    assert stopped.exit_code == 1, stopped.output
    assert "line 3" in stopped.output and "quote" in stopped.output and "Traceback" not in stopped.output
    assert [(r["row"], r["outcome"]) for r in read_report(report)] == [("1", "created")]  # the rows before it
    lines[1] = "quo-d,DX,坏行,男,1980-01-01,,,,"
    src.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    again = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "r2.csv"))
    assert again.exit_code == 0, again.output
    outcomes = [r["outcome"] for r in read_report(tmp_path / "r2.csv")]
    assert len(outcomes) == 201 and outcomes[0] == "unchanged" and outcomes[1:] == ["created"] * 200


def test_an_unclosed_quote_in_a_large_file_is_one_line_not_a_traceback(tmp_path: Path, settings: Any,
                                                                       monkeypatch: Any) -> None:
    """Past 131,072 characters the csv module's `field larger than field limit` escaped as a traceback."""
    lines = [f"quo-c,C{i},张{i % 10}三,男,1980-01-01,,,," for i in range(12000)]
    lines.insert(1, 'quo-c,"CX,坏行,男,1980-01-01,,,,')
    src = tmp_path / "big.csv"
    src.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    stopped = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "r.csv"))
    assert stopped.exit_code == 1 and isinstance(stopped.exception, SystemExit), repr(stopped.exception)
    assert "Traceback" not in stopped.output and "line 3" in stopped.output and "quote" in stopped.output
    assert [r["outcome"] for r in read_report(tmp_path / "r.csv")] == ["created"]


def test_a_quote_problem_within_one_line_rejects_that_row_only(tmp_path: Path, settings: Any,
                                                               monkeypatch: Any) -> None:
    """A row whose bad quote ends with its own line (text after a closing quote; a quote opened on the last line)
    is known to be that line: it is rejected, naming the line, and the rows after it are read."""
    src = tmp_path / "one.csv"
    src.write_text(HEADER + 'quo-e,E1,甲一,男,,,,,\nquo-e,"E2"x,乙二,男,,,,,\nquo-e,E3,丙三,男,,,,,\n'
                   'quo-e,"E4,丁四,男,,,,,\n', encoding="utf-8")
    result = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "r.csv"))
    assert result.exit_code == 0, result.output
    report = read_report(tmp_path / "r.csv")
    assert [r["outcome"] for r in report] == ["created", "rejected", "created", "rejected"]
    assert "line 3" in report[1]["reason"] and "line 5" in report[3]["reason"]


# -- 4. rows whose identifiers the master index does not know: a rerun finds them again -----------------------

@pytest.mark.parametrize("batch", [1, 500])
def test_a_rerun_finds_a_row_by_identifiers_the_index_does_not_know(importer: Importer, client: Any,
                                                                    tmp_path: Path, services: Any,
                                                                    batch: int) -> None:
    """Its only identifier has a system outside the identifier registry, so it has no claim: every rerun
    created the resident again. The import now finds the Patient holding exactly the row's identifiers, as
    a conditional create on identifier=system|value would."""
    system, value = "http://hospital.example/mrn", f"H-{batch}-77"
    res = {"resourceType": "Patient", "name": [{"text": "无号"}], "gender": "male", "birthDate": "1955-05-05",
           "identifier": [{"system": system, "value": value}]}
    first = run_ndjson(importer, tmp_path, [res], batch)[0]
    assert first["outcome"] == "created", first
    pid = first["patient_id"]
    again = run_ndjson(importer, tmp_path, [res], batch)[0]
    assert (again["outcome"], again["patient_id"], again["ehc_id"]) == ("unchanged", pid, first["ehc_id"])
    vid = services.repo.get_doc("Patient", pid)["vid"]
    assert run_ndjson(importer, tmp_path, [res], batch)[0]["outcome"] == "unchanged"
    assert services.repo.get_doc("Patient", pid)["vid"] == vid
    # what a registration adds (a phone) is added, and another name is refused as for a registered resident
    phoned = {**res, "telecom": [{"system": "phone", "value": "13900000077", "use": "mobile"}]}
    other = {**res, "name": [{"text": "王五"}]}
    linked, refused = run_ndjson(importer, tmp_path, [phoned, other], batch)
    assert (linked["outcome"], linked["patient_id"]) == ("linked", pid), linked
    assert refused["outcome"] == "rejected" and "409" in refused["reason"] and "Patient.name" in refused["reason"]
    found = client.get(f"/fhir/Patient?identifier={system}|{value}").get_json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [pid]


def test_rows_sharing_an_unknown_identifier_in_one_batch_give_one_resident(importer: Importer,
                                                                            tmp_path: Path) -> None:
    res = {"resourceType": "Patient", "name": [{"text": "同号"}],
           "identifier": [{"system": "http://hospital.example/mrn", "value": "H-TWICE"}]}
    fillers = [{"resourceType": "Patient", "name": [{"text": f"旁{i}"}],
                "identifier": [{"system": "http://hospital.example/mrn", "value": f"H-F{i}"}]} for i in range(6)]
    report = run_ndjson(importer, tmp_path, [res, *fillers, res], batch=500, workers=4)
    assert [r["outcome"] for r in report] == ["created"] * 7 + ["unchanged"]
    assert report[-1]["patient_id"] == report[0]["patient_id"]


def test_a_row_without_any_identifier_is_rejected_with_the_reason(importer: Importer, client: Any,
                                                                  tmp_path: Path, services: Any) -> None:
    """Nothing could tell its rerun from a new resident: the import refuses it. POST is unchanged."""
    res = {"resourceType": "Patient", "name": [{"text": "无证"}], "gender": "female"}
    before = services.repo.db["Patient"].count_documents({})
    out = run_ndjson(importer, tmp_path, [res])[0]
    assert out["outcome"] == "rejected" and "no identifier" in out["reason"], out
    assert services.repo.db["Patient"].count_documents({}) == before
    assert post(client, res).status_code == 201
