"""`ehc import` in batches: the same report and the same stored residents, cards, claims and postings as
importing the rows one at a time (compared across two databases with the same platform keys), the rows that
are not plain new residents handled by the one-row path exactly as before, reruns unchanged, and a bounded
number of database commands per batch of new residents."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.mpi.importer import Importer, csv_patient
from tests.integration.test_import import read_report, row, write_csv
from tests.integration.test_mpi_registration import id_number
from tests.round_trips import counter


def make_services(settings: Settings, suffix: str) -> Any:
    """Services on a database of its own, with the MPI and card handlers as `ehc import` has them, and the
    platform keys of `settings` (so claim keys and formal cards are comparable across databases)."""
    from pymongo import MongoClient

    from app.cli.imports import attach_index
    from app.services import build_services

    uri = settings.mongodb_uri + suffix
    base, name = uri.rsplit("/", 1)
    client: MongoClient = MongoClient(base + "/")
    client.drop_database(name)
    client.close()
    svc = build_services(Settings(mongodb_uri=uri, province=settings.province, base_url=None,
                                  data_dir=settings.data_dir, auth_required=False))
    attach_index(svc)
    return svc


@pytest.fixture(scope="module")
def pair(settings: Settings) -> Iterator[tuple[Importer, Importer]]:
    counter()  # before the clients exist, for the round-trip test
    batched, single = make_services(settings, "_b"), make_services(settings, "_s")
    yield (Importer(batched, batched.extensions["mpi_hooks"], batch_size=50),
           Importer(single, single.extensions["mpi_hooks"]))
    batched.handle.close()
    single.handle.close()


def canonical(imp: Importer, report: list[dict[str, str]]) -> dict[str, Any]:
    """What the import stored, with the values that differ between two databases by chance (patient ids,
    temporary card numbers, times) replaced by the row that made them."""
    svc = imp.svc
    names: dict[str, str] = {}
    for r in report:
        if r["patient_id"]:
            names.setdefault(r["patient_id"], f"P{r['row']}")
    docs = [svc.repo.get_doc("Patient", pid) for pid in names]
    for doc in docs:
        for ident in doc["res"]["identifier"]:
            if "temporary" in json.dumps(ident.get("type") or {}):
                names.setdefault(ident["value"], f"T{names[doc['_id']]}")
    db = svc.repo.db

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k not in ("ts", "at", "since", "lastUpdated")}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, datetime):
            return "time"
        return value

    def text(value: Any) -> str:
        out = json.dumps(scrub(value), ensure_ascii=False, sort_keys=True, default=str)
        for real, name in names.items():
            out = out.replace(real, name)
        return out

    def listed(col: str, prefix: str = "") -> list[str]:
        return sorted(text({**d, "ids": sorted(text(i) for i in d.get("ids", []))} if "ids" in d else d)
                      for d in db[col].find({}) if str(d["_id"]).startswith(prefix))

    return {
        "report": [text(r) for r in report],
        "patients": sorted(text(d) for d in docs),
        "count": db["Patient"].count_documents({}),
        "cards": listed("ehc_cards"),
        "claims": listed("mpi_claims"),
        "names": listed("mpi_names"),
        "postings": listed("_keys", "Patient|"),
    }


def rows_of_every_kind() -> list[dict[str, str]]:
    rows = []
    for i in range(70):  # new residents, with and without an ID number, legacy 15-digit numbers
        number = id_number("310101", f"19{50 + i % 40}-03-0{1 + i % 9}", 100 + 2 * i) if i % 5 else ""
        if i % 17 == 3:
            number = "310101" + f"{60 + i % 30}0305" + f"{100 + i:03d}"  # 15 digits
        rows.append(row("bt-hosp", f"M{i}", "黄" + "一二三四五六七八九"[i % 9] + "明", number,
                        gender="女" if number else "男"))
    dup = id_number("310102", "1966-06-06", 601)
    rows[10] = row("bt-hosp", "D1", "钱多", dup, gender="男")  # the same resident twice in one batch
    rows[30] = row("bt-other", "D2", "钱多", dup, gender="1")
    rows[31] = row("bt-other", "D3", "钱少", dup)  # a name contradicting the resident's: refused
    rows[12] = row("bt-hosp", "E1", "孙老", id_number("310101", "1950-01-01", 901))  # registered before the import
    rows[13] = row("bt-new", "E2", "孙老", id_number("310101", "1950-01-01", 901))  # links to it
    rows[14] = row("bt-hosp", "X1", "错号", "310101195001010000")  # check character wrong
    rows[15] = row("bt-hosp", "", "无号")  # no record number
    rows[16] = row("bt-hosp", "X2", "怪性", id_number("310101", "1951-01-01", 903), gender="robot")
    rows[17] = row("bt-hosp", "X3", "怪证", "X", id_type="42")
    # rows 4 and 38: 15-digit numbers whose sequence digit says male, with gender female: refused
    rows[40] = row("bt-hosp", "M6", "黄七明", phone="13900000006")  # the record of row 7 again, another batch
    return rows


def test_batches_store_what_one_row_at_a_time_stores(pair: tuple[Importer, Importer], tmp_path: Path) -> None:
    batched, single = pair
    before = [row("bt-hosp", "E1", "孙老", id_number("310101", "1950-01-01", 901), gender="男")]
    for imp in pair:  # a resident both databases know before the import
        assert imp.run(write_csv(tmp_path / "before.csv", before), tmp_path / "before-report.csv",
                       progress=False)["created"] == 1
    src = write_csv(tmp_path / "in.csv", rows_of_every_kind())
    counts_b = batched.run(src, tmp_path / "batched.csv", progress=False, workers=4)
    counts_s = single.run(src, tmp_path / "single.csv", progress=False)
    assert counts_b == counts_s
    assert counts_b == {"created": 59, "linked": 3, "unchanged": 1, "rejected": 7}
    report_b, report_s = read_report(tmp_path / "batched.csv"), read_report(tmp_path / "single.csv")
    assert [r["outcome"] for r in report_b] == [r["outcome"] for r in report_s]  # reasons: in canonical()
    assert report_b[13]["outcome"] == "linked" and report_b[30]["outcome"] == "linked"
    assert report_b[30]["patient_id"] == report_b[10]["patient_id"]
    assert report_b[40]["outcome"] == "linked" and report_b[40]["patient_id"] == report_b[6]["patient_id"]
    assert "409" in report_b[31]["reason"] and report_b[12]["outcome"] == "unchanged"
    seen_b, seen_s = canonical(batched, report_b), canonical(single, report_s)
    for part in seen_b:
        assert seen_b[part] == seen_s[part], part
    # A rerun, in batches, changes nothing: every row unchanged or rejected as before, nothing written.
    counts_again = batched.run(src, tmp_path / "again.ndjson", progress=False, workers=4)
    assert counts_again == {"created": 0, "linked": 0, "unchanged": 63,
                            "rejected": counts_b["rejected"]}
    again = read_report(tmp_path / "again.ndjson")
    assert [r["patient_id"] for r in again] == [r["patient_id"] for r in report_b]
    assert canonical(batched, report_b) == seen_b


def test_a_crash_after_the_claims_leaves_no_resident(pair: tuple[Importer, Importer], tmp_path: Path) -> None:
    batched, _ = pair
    rows = [row("crash-hosp", f"C{i}", "周" + "甲乙丙丁"[i % 4], id_number("320102", "1970-02-02", 300 + 2 * i))
            for i in range(20)]
    src = write_csv(tmp_path / "crash.csv", rows)
    fail = RuntimeError("killed between the claims and the Patients")

    def killed(*_args: Any, **_kw: Any) -> Any:
        raise fail

    repo = batched.svc.repo
    repo.create_many = killed  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError):
            batched.run(src, tmp_path / "crash-report.csv", progress=False)
    finally:
        del repo.create_many
    assert batched.svc.repo.db["_leases"].count_documents({}) == 0  # released on the way out
    counts = batched.run(src, tmp_path / "after.csv", progress=False)
    assert counts == {"created": 20, "linked": 0, "unchanged": 0, "rejected": 0}
    report = read_report(tmp_path / "after.csv")
    for i, r in enumerate(report):
        found = repo.keys.lookup(f"Patient|i|urn:ehc:mrn:crash-hosp|C{i}")
        assert [p for p in found if repo.exists("Patient", p)] == [r["patient_id"]]


BATCH_CEILING = 40  # commands for 500 new residents: 7 where their name lists are new (~5,000 one row at a time)


def test_commands_per_batch_of_new_residents(pair: tuple[Importer, Importer], tmp_path: Path) -> None:
    batched, _ = pair
    batched.batch_size = 500
    rows = [row("rt-batch", f"B{i}", "吴" + "甲乙丙丁戊己庚辛"[i % 8] + "文",
                id_number("330102", (date(1960, 1, 1) + timedelta(days=7 * i)).isoformat(), 101), gender="男")
            for i in range(500)]
    path = write_csv(tmp_path / "b500.csv", rows)
    with open(path, encoding="utf-8", newline="") as fh:
        items: list[tuple[int, Any]] = [(n, csv_patient(r, batched.registry))
                                        for n, r in enumerate(csv.DictReader(fh), start=1)]
    with counter().recording(batched.svc.handle.db.name) as found:
        results = batched.process_batch(items)
    assert [r.outcome for r in results] == ["created"] * 500, [r.reason for r in results if r.reason][:3]
    assert len(found) <= BATCH_CEILING, [str(c) for c in found]
    with counter().recording(batched.svc.handle.db.name) as again:
        results = batched.process_batch(items[:20])
    assert [r.outcome for r in results] == ["unchanged"] * 20
    assert not [c for c in again if c.name in ("insert", "update", "delete", "findAndModify")
                and c.collection in ("Patient", "mpi_names", "ehc_cards", "_keys")]


def test_a_lease_held_elsewhere_sends_its_row_to_the_one_row_path(pair: tuple[Importer, Importer],
                                                                  tmp_path: Path) -> None:
    from app.core.timeutil import utcnow

    batched, _ = pair
    rows = [row("lease-hosp", f"L{i}", "郑" + "甲乙丙"[i % 3], id_number("320103", "1971-03-03", 500 + 2 * i))
            for i in range(6)]
    # A writer that died holding the lease of row 3's record number: expired, so the one-row path takes it over.
    key = batched.index.claim_key("urn:ehc:mrn:lease-hosp", "L2")
    leases = batched.svc.repo.db["_leases"]
    leases.insert_one({"_id": "mpi|" + key, "token": "dead-writer", "until": utcnow() - timedelta(seconds=1)})
    taken_over: list[str] = []
    batched.svc.leases.before_takeover = lambda held: taken_over.append(held["_id"])
    try:
        counts = batched.run(write_csv(tmp_path / "lease.csv", rows), tmp_path / "lease-report.csv",
                             progress=False)
    finally:
        batched.svc.leases.before_takeover = None
    assert counts == {"created": 6, "linked": 0, "unchanged": 0, "rejected": 0}
    assert taken_over == ["mpi|" + key]  # row 3 went through the one-row path, which took the lease over
    assert leases.count_documents({}) == 0
    report = read_report(tmp_path / "lease-report.csv")
    assert len({r["patient_id"] for r in report}) == 6


def test_pipelined_batches_give_what_one_row_at_a_time_gives(settings: Settings, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches are written at once when they share no identifier; a batch sharing one with a batch still
    being written waits for it. Batches of 20 over the mixed file: batch 2 holds the second row of a resident
    whose first row is in batch 1 (row 31 after row 11), batch 3 the record of row 7 again (row 41), and the
    last, partial batch comes after all of them. The report and what is stored are those of one row at a
    time, and batches that share nothing did overlap."""
    import threading
    import time

    from app.mpi import importer as importer_module

    pipelined_svc, single_svc = make_services(settings, "_pp"), make_services(settings, "_ps")
    try:
        pipelined = Importer(pipelined_svc, pipelined_svc.extensions["mpi_hooks"], batch_size=20)
        single = Importer(single_svc, single_svc.extensions["mpi_hooks"])
        before = [row("bt-hosp", "E1", "孙老", id_number("310101", "1950-01-01", 901), gender="男")]
        for imp in (pipelined, single):
            imp.run(write_csv(tmp_path / "before.csv", before), tmp_path / "before-report.csv", progress=False)
        running, most = 0, 0
        lock = threading.Lock()
        write_batch = importer_module.Importer.write_batch

        def counted(self: Importer, batch: Any) -> Any:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            try:
                time.sleep(0.2)  # long enough for the next batch to be prepared and started meanwhile
                return write_batch(self, batch)
            finally:
                with lock:
                    running -= 1

        monkeypatch.setattr(importer_module.Importer, "write_batch", counted)
        src = write_csv(tmp_path / "in.csv", rows_of_every_kind())
        counts_p = pipelined.run(src, tmp_path / "pipelined.csv", progress=False, workers=4)
        counts_s = single.run(src, tmp_path / "single.csv", progress=False)
        assert counts_p == counts_s == {"created": 59, "linked": 3, "unchanged": 1, "rejected": 7}
        report_p, report_s = read_report(tmp_path / "pipelined.csv"), read_report(tmp_path / "single.csv")
        assert [r["row"] for r in report_p] == [str(n) for n in range(1, 71)]
        assert [r["outcome"] for r in report_p] == [r["outcome"] for r in report_s]
        assert report_p[30]["patient_id"] == report_p[10]["patient_id"]
        assert report_p[40]["patient_id"] == report_p[6]["patient_id"]
        assert canonical(pipelined, report_p) == canonical(single, report_s)
        assert most == 2
    finally:
        pipelined_svc.handle.close()
        single_svc.handle.close()
