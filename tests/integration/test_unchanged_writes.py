"""A PATCH or PUT that changes nothing makes no new version (HAPI's behaviour): `[]`, a JSON Patch of tests or of
values replaced by themselves, a FHIRPath Patch likewise, a PUT of the current resource. The answer is 200 with the
current version (its ETag, Location, Last-Modified); If-Match still applies (a stale one is 412); the access is
audited as any PATCH or PUT. Before, each of them stored a new version with the same content."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from app.audit.chain import EVENTS
from tests.conftest import sample
from tests.sealing import seal_everything

FJ = "application/fhir+json"
JP = "application/json-patch+json"


def new_patient(client: Any) -> dict[str, Any]:
    pat = sample("patient-zhang.json")
    pat["identifier"] = [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]
    r = client.post("/fhir/Patient", data=json.dumps(pat), content_type=FJ)
    assert r.status_code == 201, r.json
    return dict(r.json)


def versions(client: Any, pid: str) -> int:
    return int(client.get(f"/fhir/Patient/{pid}/_history").json["total"])


def fhirpath_replace(path: str, value: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": path},
        {"name": "value", "valueCode": value}]}]}


NO_CHANGE = {
    "empty JSON Patch": lambda pat: (json.dumps([]), JP),
    "JSON Patch of a test": lambda pat: (json.dumps([{"op": "test", "path": "/gender", "value": pat["gender"]}]), JP),
    "JSON Patch replacing a value by itself": lambda pat: (
        json.dumps([{"op": "replace", "path": "/gender", "value": pat["gender"]}]), JP),
    "JSON Patch adding and removing": lambda pat: (
        json.dumps([{"op": "add", "path": "/active", "value": False}, {"op": "remove", "path": "/active"}]), JP),
    "FHIRPath Patch replacing a value by itself": lambda pat: (
        json.dumps(fhirpath_replace("Patient.gender", pat["gender"])), FJ),
}


@pytest.mark.parametrize("case", list(NO_CHANGE))
def test_a_patch_that_changes_nothing_answers_the_current_version(client: Any, case: str) -> None:
    pat = new_patient(client)
    pat.pop("active", None)
    client.put(f"/fhir/Patient/{pat['id']}", data=json.dumps(pat), content_type=FJ)  # no `active` (for "add")
    current = client.get(f"/fhir/Patient/{pat['id']}")
    before = versions(client, pat["id"])
    body, ctype = NO_CHANGE[case](current.json)
    r = client.patch(f"/fhir/Patient/{pat['id']}", data=body, content_type=ctype)
    assert r.status_code == 200, r.json
    assert r.json == current.json  # the current version, its meta included
    assert r.headers["ETag"] == current.headers["ETag"]
    assert r.headers["Last-Modified"] == current.headers["Last-Modified"]
    assert r.headers["Content-Location"].endswith(f"/_history/{current.json['meta']['versionId']}")
    assert versions(client, pat["id"]) == before
    assert client.get(f"/fhir/Patient/{pat['id']}").json == current.json


def test_a_patch_that_changes_something_still_makes_a_version(client: Any) -> None:
    pat = new_patient(client)
    r = client.patch(f"/fhir/Patient/{pat['id']}", data=json.dumps([{"op": "replace", "path": "/gender",
                                                                   "value": "female"}]), content_type=JP)
    assert r.status_code == 200 and r.json["meta"]["versionId"] == "2" and r.headers["ETag"] == 'W/"2"'
    assert versions(client, pat["id"]) == 2


def test_if_match_still_applies_to_a_patch_that_changes_nothing(client: Any) -> None:
    pat = new_patient(client)
    changed = client.patch(f"/fhir/Patient/{pat['id']}", data=json.dumps([{"op": "add", "path": "/active",
                                                                         "value": False}]), content_type=JP)
    assert changed.json["meta"]["versionId"] == "2"
    stale = client.patch(f"/fhir/Patient/{pat['id']}", data="[]", content_type=JP, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412, stale.json
    fresh = client.patch(f"/fhir/Patient/{pat['id']}", data="[]", content_type=JP, headers={"If-Match": 'W/"2"'})
    assert fresh.status_code == 200 and fresh.headers["ETag"] == 'W/"2"'
    assert versions(client, pat["id"]) == 2


def test_a_put_of_the_current_resource_makes_no_version(client: Any) -> None:
    pat = new_patient(client)
    pid = pat["id"]
    current = client.get(f"/fhir/Patient/{pid}")
    r = client.put(f"/fhir/Patient/{pid}", data=json.dumps(current.json), content_type=FJ)
    assert r.status_code == 200, r.json  # not 201: nothing was created
    assert r.json == current.json and r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"].endswith(f"/Patient/{pid}/_history/1")
    without_meta = {k: v for k, v in current.json.items() if k != "meta"}  # meta.versionId and lastUpdated aside
    r = client.put(f"/fhir/Patient/{pid}", data=json.dumps(without_meta), content_type=FJ,
                   headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"1"'
    assert versions(client, pid) == 1
    stale = client.put(f"/fhir/Patient/{pid}", data=json.dumps(without_meta), content_type=FJ,
                       headers={"If-Match": 'W/"0"'})
    assert stale.status_code == 412, stale.json
    changed = client.put(f"/fhir/Patient/{pid}", data=json.dumps({**without_meta, "active": False}), content_type=FJ)
    assert changed.status_code == 200 and changed.headers["ETag"] == 'W/"2"'
    assert versions(client, pid) == 2


def test_a_put_over_a_deleted_resource_still_makes_a_version(client: Any) -> None:
    org = {"resourceType": "Organization", "name": "unchanged " + uuid.uuid4().hex[:8]}
    current = client.post("/fhir/Organization", data=json.dumps(org), content_type=FJ).json
    oid = current["id"]
    assert client.delete(f"/fhir/Organization/{oid}").status_code == 200
    r = client.put(f"/fhir/Organization/{oid}", data=json.dumps(current), content_type=FJ)
    assert r.status_code in (200, 201) and r.headers["ETag"] == 'W/"3"', r.json
    assert client.get(f"/fhir/Organization/{oid}/_history").json["total"] == 3


def test_writes_that_change_nothing_are_audited(client: Any, services: Any) -> None:
    pat = new_patient(client)
    pid = pat["id"]
    current = client.get(f"/fhir/Patient/{pid}").json
    assert client.patch(f"/fhir/Patient/{pid}", data="[]", content_type=JP).status_code == 200
    assert client.put(f"/fhir/Patient/{pid}", data=json.dumps(current), content_type=FJ).status_code == 200
    sealer = services.extensions["audit"].sealer
    seal_everything(sealer)
    events = [d["res"] for d in services.handle.db[EVENTS].find({})
              if any(e.get("what", {}).get("reference") == f"Patient/{pid}" for e in d["res"].get("entity", []))]
    done = sorted((e["subtype"][0]["code"], e["action"], e["outcome"]) for e in events
                  if e["subtype"][0]["code"] in ("patch", "update"))
    assert done == [("patch", "U", "0"), ("update", "U", "0")], done
    # each write's intent (stored before it ran) was answered by its event: nothing is left pending
    assert not [p for p in sealer.pending.find({"kind": "intent"}) if p.get("path") == f"Patient/{pid}"]


def test_a_decimal_written_with_another_precision_is_a_change(client: Any) -> None:
    """R4 decimals keep their precision (0.10 is not 0.1): compared as numbers, the PUT was judged unchanged and the
    new precision lost."""
    raw = ('{"resourceType": "Observation", "status": "final", "code": {"text": "血糖"}, '
           '"valueQuantity": {"value": 0.10, "unit": "mmol/L"}}')
    oid = client.post("/fhir/Observation", data=raw, content_type=FJ).json["id"]
    same = client.put(f"/fhir/Observation/{oid}", data=client.get(f"/fhir/Observation/{oid}").data, content_type=FJ)
    assert same.status_code == 200 and same.headers["ETag"] == 'W/"1"'  # the same text: unchanged
    body = raw.replace("{", f'{{"id": "{oid}", ', 1).replace("0.10", "0.1")
    r = client.put(f"/fhir/Observation/{oid}", data=body, content_type=FJ)
    assert r.status_code == 200 and r.headers["ETag"] == 'W/"2"', r.json
    assert b'"value":0.1,' in client.get(f"/fhir/Observation/{oid}").data
