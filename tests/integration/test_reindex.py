"""`ehc reindex` after the change of 2026-11-30 (a date without a zone is a day of China, not of UTC): documents
written before it carry the old index values and are not found by date until rebuilt; the rebuild leaves alone a
version a write replaced meanwhile, and a second run writes nothing."""

from __future__ import annotations

import json
from datetime import datetime

from click.testing import CliRunner

from app.cli import main
from app.store.reindex import reindex

FJ = {"Content-Type": "application/fhir+json"}
UTC_DAY = {"lo": datetime(1962, 3, 4), "hi": datetime(1962, 3, 5)}  # how the release before indexed 1962-03-04


def _written_before_the_change(services, client, family: str) -> str:
    """A Patient born 1962-03-04 whose stored index is the one the previous release wrote (the UTC day)."""
    body = {"resourceType": "Patient", "name": [{"family": family, "given": ["旧"]}], "gender": "female",
            "birthDate": "1962-03-04"}
    r = client.post("/fhir/Patient", json=body, headers=FJ)
    assert r.status_code == 201, r.json
    pid = r.json["id"]
    services.repo.current("Patient").update_one(
        {"_id": pid}, {"$set": {"ix.birthdate": [UTC_DAY], "so.birthdate": UTC_DAY["lo"]}})
    return str(pid)


def _found(client, family: str) -> list[str]:
    r = client.get(f"/fhir/Patient?birthdate=1962-03-04&family={family}")
    assert r.status_code == 200, r.json
    return [e["resource"]["id"] for e in r.json.get("entry", [])]


def test_reindex_command_makes_older_documents_searchable_by_china_days(client, services, settings):
    pid = _written_before_the_change(services, client, "旧索引")
    assert _found(client, "旧索引") == []  # the old UTC day is not inside the day of China asked for
    env = {"EHC_MONGODB_URI": settings.mongodb_uri, "EHC_DATA_DIR": str(settings.data_dir), "EHC_PROVINCE": "11"}
    first = CliRunner().invoke(main, ["reindex", "--no-progress"], env=env)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["by_type"].get("Patient", 0) >= 1 and report["checked"] >= report["rebuilt"] >= 1
    assert _found(client, "旧索引") == [pid]
    again = json.loads(CliRunner().invoke(main, ["reindex", "--no-progress"], env=env).stdout)
    assert again["rebuilt"] == 0  # nothing left to rebuild: a rerun writes nothing


def test_reindex_leaves_a_version_written_meanwhile_alone(client, services):
    pid = _written_before_the_change(services, client, "并发改")
    raw = services.repo.current("Patient").find_one({"_id": pid})

    def write_meanwhile(rtype: str, rid: str) -> None:
        """The server updates this Patient right after the rebuild has read it."""
        if rid == pid:
            body = {**raw["res"], "name": [{"family": "并发改", "given": ["新"]}]}
            body.pop("meta", None)
            assert client.put(f"/fhir/Patient/{pid}", json=body, headers=FJ).status_code == 200

    report = reindex(services.repo, on_document=write_meanwhile)
    assert report.raced == 1  # its index was not replaced: the write had indexed it already
    stored = services.repo.current("Patient").find_one({"_id": pid})
    assert stored["vid"] == 2 and stored["res"]["name"][0]["given"] == ["新"]  # the write is kept whole
    assert _found(client, "并发改") == [pid]  # and indexed by the new rule, for what it says now
    r = client.get("/fhir/Patient?given=新&family=并发改")
    assert [e["resource"]["id"] for e in r.json.get("entry", [])] == [pid]
