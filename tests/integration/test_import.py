"""`ehc import`: every row reported, legacy 15-digit numbers normalised, rerun idempotent,
an interrupted run completed by a rerun without duplicates, CSV and NDJSON, through the CLI as well."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from app.mpi.documents import mod11_2
from app.mpi.importer import CSV_COLUMNS, Importer
from tests.integration.test_mpi_registration import ID_SYS, id_number

HEADER = ",".join(CSV_COLUMNS)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    return path


def row(source, mrn, name, number="", id_type="01", **kw):
    return {"source_system": source, "mrn": mrn, "name": name, "id_type": id_type if number else "",
            "id_number": number, **kw}


def read_report(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def importer(services):
    from app.mpi.plugin import setup

    return Importer(services, setup(services))


def test_every_row_reported_and_rerun_unchanged(importer, tmp_path, services):
    n1 = id_number("110101", "1980-01-01", 11)
    legacy15 = "440305" + "850607" + "123"  # 1985-06-07, sequence 123 (odd: male)
    rows = [
        row("hosp-a", "A1", "许一", n1, gender="男", birth_date="1980-01-01", phone="13900000001",
            address="北京市东城区和平里1号"),
        row("hosp-b", "B1", "许一", n1, gender="1"),  # the same resident at another hospital
        row("hosp-a", "A2", "何二", legacy15, gender="M", birth_date="19850607"),
        row("hosp-a", "A3", "吕三", "110101200001010011"),  # check character wrong
        row("hosp-a", "A4", "施四", "X1", id_type="42"),  # unknown document type
        row("hosp-a", "", "张五"),  # no record number
        row("hosp-c", "C1", "许壹", n1),  # a name contradicting the resident's
        row("hosp-a", "A6", "孔六", gender="女"),  # no document: a temporary card
    ]
    src = write_csv(tmp_path / "in.csv", rows)
    counts = importer.run(src, tmp_path / "r1.csv", progress=False)
    report = read_report(tmp_path / "r1.csv")
    assert [int(r["row"]) for r in report] == list(range(1, len(rows) + 1))
    assert [r["outcome"] for r in report] == ["created", "linked", "created", "rejected", "rejected", "rejected",
                                              "rejected", "created"]
    assert counts == {"created": 3, "linked": 1, "unchanged": 0, "rejected": 4}
    assert report[0]["patient_id"] == report[1]["patient_id"] and len(report[0]["ehc_id"]) == 64
    assert "校验码" in report[3]["reason"] and "Patient.identifier[0].value" in report[3]["reason"]
    assert "42" in report[4]["reason"] and "409" in report[6]["reason"]
    legacy = services.repo.get_doc("Patient", report[2]["patient_id"])["res"]
    body = "44030519850607123"
    assert {"system": ID_SYS, "value": body + mod11_2(body)} in legacy["identifier"]
    assert legacy["gender"] == "male" and legacy["birthDate"] == "1985-06-07"
    # Rerun: nothing changes.
    versions = {r["patient_id"]: services.repo.get_doc("Patient", r["patient_id"])["vid"]
                for r in report if r["patient_id"]}
    counts2 = importer.run(src, tmp_path / "r2.ndjson", progress=False)
    report2 = read_report(tmp_path / "r2.ndjson")
    assert counts2 == {"created": 0, "linked": 0, "unchanged": 4, "rejected": 4}
    assert [r["patient_id"] for r in report2] == [r["patient_id"] for r in report]
    assert [r["ehc_id"] for r in report2] == [r["ehc_id"] for r in report]
    assert {pid: services.repo.get_doc("Patient", pid)["vid"] for pid in versions} == versions


def test_interrupted_run_completes_without_duplicates(importer, tmp_path, services):
    rows = [row("hosp-x", f"X{i}", f"段{i}", id_number("320102", "1990-01-01", 200 + 2 * i) if i % 3 else "")
            for i in range(30)]
    src = write_csv(tmp_path / "all.csv", rows)
    write_csv(tmp_path / "part.csv", rows[:12])
    importer.run(tmp_path / "part.csv", tmp_path / "part-report.csv", progress=False)
    # A crash inside row 13: its claims were written, its Patient never was.
    mrn13 = importer.index.claim_key("urn:ehc:mrn:hosp-x", "X12")
    importer.index.write_claims([mrn13], "never-written-patient")
    counts = importer.run(src, tmp_path / "rerun.csv", progress=False, workers=4)
    assert counts == {"created": 18, "linked": 0, "unchanged": 12, "rejected": 0}
    report = read_report(tmp_path / "rerun.csv")
    assert len({r["patient_id"] for r in report}) == 30
    for i in range(30):
        found = services.repo.keys.lookup(f"Patient|i|urn:ehc:mrn:hosp-x|X{i}")
        assert len([p for p in found if services.repo.exists("Patient", p)]) == 1


def _cli_import(settings: Any, monkeypatch: Any, *args: str) -> Any:
    from click.testing import CliRunner

    from app.cli import main

    monkeypatch.setenv("EHC_MONGODB_URI", settings.mongodb_uri)
    monkeypatch.setenv("EHC_DATA_DIR", str(settings.data_dir))
    return CliRunner().invoke(main, ["import", *args, "--no-progress"])


def test_ndjson_and_the_cli(tmp_path, settings, services, monkeypatch):
    lines = [
        {"resourceType": "Patient", "name": [{"text": "曹七"}],
         "identifier": [{"system": "urn:ehc:mrn:hosp-n", "value": "N1"},
                        {"system": ID_SYS, "value": id_number("500103", "1977-07-07", 77)}]},
        {"resourceType": "Observation"},
        {"resourceType": "Patient", "gender": "robot", "identifier": [{"system": "urn:ehc:mrn:hosp-n", "value": "N2"}]},
    ]
    src = tmp_path / "in.ndjson"
    src.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\nnot json\n", encoding="utf-8")
    result = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "out.csv"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["created"] == 1 and summary["rejected"] == 3
    report = read_report(tmp_path / "out.csv")
    assert [r["outcome"] for r in report] == ["created", "rejected", "rejected", "rejected"]
    assert "gender" in report[2]["reason"]
    # The CLI used the same platform keys as the server: the card is the one the server derives.
    pid = report[0]["patient_id"]
    res = services.repo.get_doc("Patient", pid)["res"]
    assert report[0]["ehc_id"] in {i["value"] for i in res["identifier"]}
    again = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "out2.csv"))
    assert json.loads(again.stdout.strip().splitlines()[-1])["unchanged"] == 1


def test_a_csv_cell_that_post_would_refuse_is_rejected_as_post_rejects_it(tmp_path, settings, monkeypatch):
    """CSV rows skipped the structure validation that POST /fhir/Patient applies ("valid by construction"), so a
    name holding U+0000 was imported although the API refuses it. Every row is now validated as POST validates."""
    src = tmp_path / "ctl.csv"
    with open(src, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["source_system", "mrn", "name"])
        writer.writerow(["hosp-ctl", "K1", "赵\x00六"])
        writer.writerow(["hosp-ctl", "K2", "钱\x07七"])
        writer.writerow(["hosp-ctl", "K3", "孙八"])
    result = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "ctl-report.csv"))
    assert result.exit_code == 0, result.output
    report = read_report(tmp_path / "ctl-report.csv")
    assert [r["outcome"] for r in report] == ["rejected", "rejected", "created"], report
    assert "U+0000" in report[0]["reason"] and "U+0007" in report[1]["reason"]


def test_ctrl_c_says_how_to_finish_and_the_rerun_does(tmp_path, settings, services, monkeypatch):
    rows = [row("hosp-c", f"C{i}", f"钱{i}", id_number("330106", "1985-05-05", 300 + 2 * i)) for i in range(12)]
    src = write_csv(tmp_path / "in.csv", rows)
    results = Importer._results

    def pressed_ctrl_c_after_five(self, rows, workers):
        for done, result in enumerate(results(self, rows, workers)):
            if done == 5:
                raise KeyboardInterrupt
            yield result

    monkeypatch.setattr(Importer, "_results", pressed_ctrl_c_after_five)
    report = tmp_path / "first.csv"
    stopped = _cli_import(settings, monkeypatch, str(src), "--report", str(report))
    assert stopped.exit_code == 130
    assert "interrupted" in stopped.stderr and "Run the same command again to finish" in stopped.stderr
    assert "Traceback" not in stopped.output
    assert [r["outcome"] for r in read_report(report)] == ["created"] * 5
    monkeypatch.setattr(Importer, "_results", results)
    again = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "again.csv"))
    assert again.exit_code == 0, again.output
    counts = json.loads(again.stdout.strip().splitlines()[-1])
    assert counts["rejected"] == 0 and counts["created"] + counts["unchanged"] == 12
    assert counts["unchanged"] >= 5  # the rows reported before Ctrl-C (and those written after them)
    for i in range(12):
        found = services.repo.keys.lookup(f"Patient|i|urn:ehc:mrn:hosp-c|C{i}")
        assert len([p for p in found if services.repo.exists("Patient", p)]) == 1


@pytest.mark.parametrize("via", ["the same path", "a symbolic link", "a hard link"])
def test_a_report_that_is_the_input_file_is_refused_and_the_file_kept(tmp_path, settings, monkeypatch, via):
    src = write_csv(tmp_path / "in.csv", [row("hosp-s", "S1", "孙一")])
    before = src.read_bytes()
    report = {"the same path": src, "a symbolic link": tmp_path / "sym.csv", "a hard link": tmp_path / "hard.csv"}[via]
    if via == "a symbolic link":
        report.symlink_to(src)
    elif via == "a hard link":
        report.hardlink_to(src)
    result = _cli_import(settings, monkeypatch, str(src), "--report", str(report))
    assert result.exit_code == 1 and "is the input file; choose another --report path" in result.output
    assert src.read_bytes() == before  # the hospital's file is intact


def test_a_gbk_file_is_refused_with_the_fix_then_read_with_encoding_gb18030(tmp_path, settings, services,
                                                                             monkeypatch):
    """What Excel saves on a Chinese system: GBK, not UTF-8."""
    src = tmp_path / "excel.csv"
    src.write_bytes("source_system,mrn,name,gender\nhosp-g,G1,欧阳娜娜,女\nhosp-g,G2,诸葛亮,男\n".encode("gbk"))
    refused = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "r1.csv"))
    assert refused.exit_code == 1 and "is not UTF-8 text" in refused.output
    assert "--encoding gb18030" in refused.output and not (tmp_path / "r1.csv").exists()
    done = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "r2.csv"), "--encoding", "GBK")
    assert done.exit_code == 0, done.output
    report = read_report(tmp_path / "r2.csv")
    assert [r["outcome"] for r in report] == ["created", "created"]
    stored = [services.repo.get_doc("Patient", r["patient_id"])["res"] for r in report]
    assert [p["name"][0]["text"] for p in stored] == ["欧阳娜娜", "诸葛亮"]
    assert [p["gender"] for p in stored] == ["female", "male"]


def test_a_utf8_file_is_not_misread_as_gb18030(tmp_path, settings, monkeypatch):
    src = write_csv(tmp_path / "utf8.csv", [row("hosp-u", "U1", "张三")])  # its bytes also decode as GB18030
    refused = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "r.csv"),
                          "--encoding", "gb18030")
    assert refused.exit_code == 1 and "reads as UTF-8 text" in refused.output
    assert not (tmp_path / "r.csv").exists()


def test_bytes_past_the_checked_start_stop_the_run_and_a_rerun_with_the_encoding_finishes(
        tmp_path, settings, monkeypatch):
    import app.mpi.importer as importer_module

    monkeypatch.setattr(importer_module, "SAMPLE_BYTES", 64)  # the start checked before anything is written
    ascii_rows = "".join(f"hosp-l,L{i},Name{i}\n" for i in range(20))
    src = tmp_path / "late.csv"
    src.write_bytes(("source_system,mrn,name\n" + ascii_rows).encode() + "hosp-l,L20,诸葛亮\n".encode("gbk"))
    stopped = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "r1.csv"))
    assert stopped.exit_code == 1 and "is not UTF-8 text" in stopped.output and "Traceback" not in stopped.output
    again = _cli_import(settings, monkeypatch, str(src), "--report", str(tmp_path / "r2.csv"),
                        "--encoding", "gb18030")
    assert again.exit_code == 0, again.output
    counts = json.loads(again.stdout.strip().splitlines()[-1])
    assert counts["created"] + counts["unchanged"] == 21 and counts["rejected"] == 0
