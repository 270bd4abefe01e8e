"""The searches vendors use are served by indexes, not collection scans (checked with explain).

On FerretDB v1 (SQLite) only `_id` equality is answered from an index ("filterPushdown"), so the
selective searches go through the posting lists: every query they issue must be an _id lookup. On
MongoDB every search parameter has a secondary index, and no plan may contain COLLSCAN.
"""

from __future__ import annotations

import json

import pytest
from pymongo import monitoring

from app.search.parser import parse_search
from app.store.database import DatabaseHandle
from app.store.repository import Repository
from app.store.searcher import Searcher


class Recorder(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: list[dict] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.finds.append({"find": event.command["find"], "filter": event.command.get("filter", {})})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
def recorded(app, db_uri):
    client = app.test_client()
    pid = client.post("/fhir/Patient", content_type="application/fhir+json", data=json.dumps({
        "resourceType": "Patient", "name": [{"family": "计划"}], "gender": "male",
        "identifier": [{"system": "urn:ehc:mrn:plan", "value": "P1"}]})).json["id"]
    for code in ("2339-0", "718-7"):
        client.post("/fhir/Observation", content_type="application/fhir+json", data=json.dumps({
            "resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}))
    svc = app.extensions["ehc"]
    recorder = Recorder()
    handle = DatabaseHandle(db_uri.rsplit("/", 1)[0] + "/", svc.settings.db_name, event_listeners=[recorder])
    searcher = Searcher(Repository(handle, svc.registry, resource_types=svc.resource_types))
    yield pid, handle, searcher, recorder
    handle.close()


def plan_uses_index(handle: DatabaseHandle, find: dict) -> bool:
    plan = handle.db.command("explain", {"find": find["find"], "filter": find["filter"]})
    if handle.is_ferretdb:
        return bool(plan.get("filterPushdown")) and "USING INDEX" in " ".join(plan["queryPlanner"]["Plan"])
    return "COLLSCAN" not in json.dumps(plan["queryPlanner"]["winningPlan"])


@pytest.mark.parametrize("rtype,query", [
    ("Patient", "identifier=urn:ehc:mrn:plan|P1"),
    ("Observation", "patient={pid}"),
    ("Observation", "subject=Patient/{pid}&code=http://loinc.org|2339-0"),
    ("Observation", "patient={pid}&_sort=-date&_count=1"),
])
def test_selective_searches_use_indexes(recorded, rtype, query):
    pid, handle, searcher, recorder = recorded
    params = [tuple(p.split("=", 1)) for p in query.format(pid=pid).split("&")]
    request = parse_search(rtype, params, searcher.registry, strict=True)
    recorder.finds.clear()
    result = searcher.search(request, 10)
    assert result.docs, query
    assert recorder.finds, "the search issued no find"
    for find in recorder.finds:
        assert plan_uses_index(handle, find), (query, find)


def test_ferretdb_id_lookup_uses_the_patched_index(recorded):
    _pid, handle, _searcher, _recorder = recorded
    if not handle.is_ferretdb:
        pytest.skip("FerretDB only")
    plan = handle.db.command("explain", {"find": "Patient", "filter": {"_id": "x"}})
    assert plan["filterPushdown"] is True
    assert any("USING INDEX" in line for line in plan["queryPlanner"]["Plan"]), plan


def test_mongodb_plans_for_every_parameter_type(recorded):
    _pid, handle, searcher, recorder = recorded
    if handle.is_ferretdb:
        pytest.skip("FerretDB v1 answers only _id filters from an index; see the README's database notes")
    for rtype, query in [("Patient", "family=计"), ("Patient", "birthdate=ge1990"), ("Observation", "code=718-7"),
                         ("Observation", "value-quantity=gt5"), ("Patient", "gender=male")]:
        params = [tuple(query.split("=", 1))]
        recorder.finds.clear()
        searcher.search(parse_search(rtype, params, searcher.registry, strict=True), 10)
        for find in recorder.finds:
            assert plan_uses_index(handle, find), (query, find)
