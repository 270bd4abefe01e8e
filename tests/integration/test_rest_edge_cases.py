"""Edge cases of the FHIR REST layer found by probing (R4 http.html, search.html; RFC 9110, RFC 6902, RFC 8259):
conditional interactions whose criteria select nothing, Unicode digits where ASCII digits are meant, forged paging
cursors, JSON Patch bodies and results that are not what they must be, If-None-Match on PUT, duplicate JSON keys,
escaped token values with a system, _total=none, :iterate includes on their own, parameters the server does not
apply, HEAD, and Prefer: return on reads."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from app.store.searcher import encode_cursor

FJ = "application/fhir+json"
JP = "application/json-patch+json"


def post(client: Any, path: str, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(f"/fhir/{path}", data=data, content_type=FJ, headers=headers)


def put(client: Any, path: str, body: Any, **headers: str) -> Any:
    return client.put(f"/fhir/{path}", data=json.dumps(body), content_type=FJ, headers=headers)


def patch(client: Any, path: str, body: Any, **headers: str) -> Any:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.patch(f"/fhir/{path}", data=data, content_type=JP, headers=headers)


def diagnostics(r: Any) -> str:
    return str(r.json["issue"][0]["diagnostics"])


def expression(r: Any) -> list[str]:
    return list(r.json["issue"][0].get("expression", []))


def forged(direction: str, values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([direction, values])).decode().rstrip("=")


@pytest.fixture(scope="module")
def pid(app: Any) -> str:
    client = app.test_client()
    return str(post(client, "Patient", {"resourceType": "Patient", "gender": "female",
                                        "name": [{"family": "边", "given": ["缘"]}]}).json["id"])


def obs(pid: str, text: str = "edge", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": text},
            "subject": {"reference": f"Patient/{pid}"}, **extra}


# -- F13: conditional interactions need criteria that select ----------------------------------------------

EMPTY_CRITERIA = ["status=", "manufacturer=", "_count=1", "_sort=status", "_format=json", "_pretty=true",
                  "_summary=count", "_elements=status", "_total=accurate", "_include=Device:patient", "_id=",
                  "status=,", "_has:Observation:device:code="]


@pytest.mark.parametrize("criteria", EMPTY_CRITERIA)
def test_conditional_writes_whose_criteria_select_nothing_are_refused(client, criteria):
    """One Device of its kind is enough to be overwritten, patched or deleted by criteria that filter nothing;
    every form of conditional interaction refuses them with 400 naming the criteria, and nothing changes."""
    did = post(client, "Device", {"resourceType": "Device", "status": "active"}).json["id"]
    before = client.get(f"/fhir/Device/{did}").json["meta"]["versionId"]
    answers = [
        put(client, f"Device?{criteria}", {"resourceType": "Device", "status": "inactive"}),
        patch(client, f"Device?{criteria}", [{"op": "replace", "path": "/status", "value": "inactive"}]),
        client.delete(f"/fhir/Device?{criteria}"),
        client.delete(f"/fhir/Device?{criteria}", headers={"X-Delete-Multiple": "true"}),
        post(client, "Device", {"resourceType": "Device", "status": "active"}, **{"If-None-Exist": criteria}),
    ]
    for r in answers:
        assert r.status_code == 400, (criteria, r.status_code, r.get_data(as_text=True))
        assert "select no Device" in diagnostics(r)
    assert answers[-1].json["issue"][0]["expression"] == ["If-None-Exist"]
    after = client.get(f"/fhir/Device/{did}")
    assert after.status_code == 200 and after.json["meta"]["versionId"] == before


def test_conditional_criteria_that_select_still_work(client):
    tag = uuid.uuid4().hex
    body = {"resourceType": "Device", "status": "active", "manufacturer": tag}
    created = post(client, "Device", body, **{"If-None-Exist": f"status=active&_count=1&manufacturer={tag}"})
    assert created.status_code == 201
    again = post(client, "Device", body, **{"If-None-Exist": f"manufacturer={tag}&_format=json"})
    assert again.status_code == 200 and again.json["id"] == created.json["id"]
    r = put(client, f"Device?manufacturer={tag}&_pretty=false", {**body, "status": "inactive"})
    assert r.status_code == 200 and r.json["status"] == "inactive"
    r = patch(client, f"Device?manufacturer={tag}&_sort=status", [{"op": "replace", "path": "/status",
                                                                   "value": "active"}])
    assert r.status_code == 200 and r.json["status"] == "active"
    r = client.delete(f"/fhir/Device?manufacturer={tag}&_count=5")
    assert r.status_code == 200 and client.get(f"/fhir/Device/{created.json['id']}").status_code == 410


@pytest.mark.parametrize("reference", ["Patient?", "Patient?name=", "Patient?_count=1", "Patient?_sort=name"])
def test_transaction_conditional_references_need_criteria_that_select(client, pid, reference):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {**obs(pid), "subject": {"reference": reference}},
         "request": {"method": "POST", "url": "Observation"}}]}
    r = post(client, "", bundle)
    assert r.status_code == 400 and "criteria" in diagnostics(r), diagnostics(r)


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "POST"])
def test_transaction_conditional_entries_need_criteria_that_select(client, method):
    entry: dict[str, Any] = {"request": {"method": method, "url": "Device?status="}}
    if method == "PUT":
        entry["resource"] = {"resourceType": "Device", "status": "inactive"}
    elif method == "PATCH":
        entry["resource"] = {"resourceType": "Binary", "contentType": JP,
                             "data": base64.b64encode(b'[{"op":"remove","path":"/status"}]').decode()}
    else:
        entry["request"] = {"method": "POST", "url": "Device", "ifNoneExist": "_count=1"}
        entry["resource"] = {"resourceType": "Device", "status": "active"}
    r = post(client, "", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    assert r.status_code == 400 and "select no Device" in diagnostics(r)


# -- F1, F2, F14: ASCII digits only -------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["²", "٣", "３", "1²"])
def test_count_takes_ascii_digits_only(client, pid, value):
    oid = post(client, "Observation", obs(pid)).json["id"]
    for path in ("Observation", "_history", "Observation/_history", f"Observation/{oid}/_history"):
        r = client.get(f"/fhir/{path}", query_string={"_count": value})
        assert r.status_code == 400, (path, r.status_code)
        assert expression(r) == ["_count"] and "_count" in diagnostics(r)


def test_version_etags_and_vread_take_ascii_digits_only(client, pid):
    oid = post(client, "Observation", obs(pid)).json["id"]
    for tag in ('W/"²"', 'W/"١"', '"٣"'):
        r = put(client, f"Observation/{oid}", {**obs(pid), "id": oid}, **{"If-Match": tag})
        assert r.status_code == 400 and expression(r) == ["If-Match"]
        assert client.delete(f"/fhir/Observation/{oid}", headers={"If-Match": tag}).status_code == 400
    for vid in ("²", "١"):
        assert client.get(f"/fhir/Observation/{oid}/_history/{vid}").status_code == 404
    assert client.get(f"/fhir/Observation/{oid}/_history/1").status_code == 200


# -- F3, F6: forged cursors -----------------------------------------------------------------------------------

def test_forged_history_cursors_are_refused_or_read_safely(client, pid):
    oid = post(client, "Observation", obs(pid)).json["id"]
    aware = encode_cursor("n", [datetime(2099, 1, 1, tzinfo=UTC), 1, "Observation", "a"])
    for path in ("_history", "Observation/_history"):
        r = client.get(f"/fhir/{path}", query_string={"_cursor": aware})
        assert r.status_code == 200 and r.json["type"] == "history"  # an instant with a zone is that instant
        for values in (["x", 1, "Observation", "a"], [{"d": "2099-01-01T00:00:00"}, "x", "Observation", "a"],
                       [{"d": "2099-01-01T00:00:00"}, [1], "Observation", "a"], [5, 1, "Observation", "a"],
                       [{"d": "2099-01-01T00:00:00"}, True, "Observation", "a"],
                       [{"d": "2099-01-01T00:00:00"}, 1, None, None]):
            r = client.get(f"/fhir/{path}", query_string={"_cursor": forged("n", values)})
            assert r.status_code == 400 and expression(r) == ["_cursor"], (values, r.get_data(as_text=True))
    for values in (["x"], [1.5], [True], [0], [None]):
        r = client.get(f"/fhir/Observation/{oid}/_history", query_string={"_cursor": forged("n", values)})
        assert r.status_code == 400 and expression(r) == ["_cursor"], values  # never page 1 again, silently


def test_a_search_cursor_with_a_zone_is_read_as_that_instant(client, pid):
    for day in ("2020-01-01", "2021-01-01", "2022-01-01"):
        post(client, "Observation", obs(pid, effectiveDateTime=day))
    for query in ("_sort=date", f"_sort=date&subject=Patient/{pid}"):  # the database path and the keyed path
        cursor = forged("n", [{"d": "2021-01-01T00:00:00+08:00"}, "x"])
        r = client.get(f"/fhir/Observation?{query}&_cursor={cursor}")
        assert r.status_code == 200, r.get_data(as_text=True)


# -- F18, F20: JSON Patch --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [[], "x", 1, None, True])
def test_a_json_patch_that_replaces_the_resource_by_a_non_object_is_422(client, pid, value):
    oid = post(client, "Observation", obs(pid)).json["id"]
    r = patch(client, f"Observation/{oid}", [{"op": "replace", "path": "", "value": value}])
    assert r.status_code == 422 and "not a resource" in diagnostics(r)
    assert client.get(f"/fhir/Observation/{oid}").json["meta"]["versionId"] == "1"


@pytest.mark.parametrize("body", ['{"op":"replace","path":"/status","value":"amended"}', '"x"', "1", "null",
                                  '{"resourceType":"Parameters"}'])
def test_a_json_patch_body_that_is_not_an_array_is_400(client, pid, body):
    oid = post(client, "Observation", obs(pid)).json["id"]
    r = patch(client, f"Observation/{oid}", body)
    assert r.status_code == 400 and "array of operations" in diagnostics(r)


# -- F17, F16: If-None-Match -----------------------------------------------------------------------------------

def test_put_with_if_none_match_star_creates_only(client, pid):
    oid = post(client, "Observation", obs(pid)).json["id"]
    r = put(client, f"Observation/{oid}", {**obs(pid, "changed"), "id": oid}, **{"If-None-Match": "*"})
    assert r.status_code == 412
    assert client.get(f"/fhir/Observation/{oid}").json["code"]["text"] == "edge"
    r = put(client, f"Observation/{oid}", {**obs(pid, "changed"), "id": oid}, **{"If-None-Match": 'W/"1"'})
    assert r.status_code == 412
    new = f"inm-{uuid.uuid4().hex[:12]}"
    r = put(client, f"Observation/{new}", {**obs(pid), "id": new}, **{"If-None-Match": "*"})
    assert r.status_code == 201
    r = put(client, f"Observation/{oid}", {**obs(pid, "changed"), "id": oid}, **{"If-None-Match": 'W/"7"'})
    assert r.status_code == 200  # the version named is not the current one: the update goes ahead


def test_read_with_a_list_of_etags_in_if_none_match(client, pid):
    oid = post(client, "Observation", obs(pid)).json["id"]
    assert client.get(f"/fhir/Observation/{oid}", headers={"If-None-Match": 'W/"1", W/"x"'}).status_code == 304
    assert client.get(f"/fhir/Observation/{oid}", headers={"If-None-Match": 'W/"2", W/"3"'}).status_code == 200


# -- F27: duplicate keys -----------------------------------------------------------------------------------------

def test_duplicate_json_keys_are_refused_naming_the_key(client, pid):
    r = post(client, "Observation", '{"resourceType":"Patient","resourceType":"Observation","status":"final",'
                                    '"code":{"text":"g"}}')
    assert r.status_code == 400 and "'resourceType' appears twice" in diagnostics(r)
    r = post(client, "Observation", '{"resourceType":"Observation","status":"final","code":{"text":"a","text":"b"}}')
    assert r.status_code == 400 and "'text' appears twice" in diagnostics(r)
    oid = post(client, "Observation", obs(pid)).json["id"]
    r = patch(client, f"Observation/{oid}", '[{"op":"replace","path":"/status","value":"amended","op":"remove"}]')
    assert r.status_code == 400 and "'op' appears twice" in diagnostics(r)
    assert client.get(f"/fhir/Observation/{oid}").json["status"] == "final"
    r = post(client, "Observation", b"\xef\xbb\xbf" + json.dumps(obs(pid)).encode())  # a BOM is skipped
    assert r.status_code == 201


# -- F7: token escapes with a system ---------------------------------------------------------------------------

def test_escaped_identifier_values_are_found_with_and_without_their_system(client, pid):
    system = f"urn:edge:{uuid.uuid4().hex[:8]}"
    values = ["A,B", "P|Q", "S$T", "B\\S"]
    oid = post(client, "Observation", obs(pid, identifier=[{"system": system, "value": v} for v in values])).json["id"]
    for v in values:
        escaped = v.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
        for query in (f"{system}|{escaped}", escaped):
            r = client.get("/fhir/Observation", query_string={"identifier": query})
            assert r.status_code == 200 and [e["resource"]["id"] for e in r.json["entry"]] == [oid], query


# -- F8: _total=none --------------------------------------------------------------------------------------------

def test_total_none_claims_no_total_and_summary_count_counts(client, pid):
    text = uuid.uuid4().hex
    for _ in range(2):
        post(client, "Observation", obs(pid, text))
    r = client.get(f"/fhir/Observation?code:text={text}&_summary=count&_total=none")
    assert r.status_code == 200 and r.json["total"] == 2
    r = client.get(f"/fhir/Observation?code:text={text}&_count=0&_total=none")
    assert r.status_code == 200 and "total" not in r.json
    r = client.get(f"/fhir/Observation?code:text={text}&_count=0")
    assert r.json["total"] == 2


# -- F10: :iterate on its own ------------------------------------------------------------------------------------

def test_iterate_includes_apply_to_the_matches_too(client, pid):
    text = uuid.uuid4().hex
    oid = post(client, "Observation", obs(pid, text)).json["id"]
    r = client.get(f"/fhir/Observation?code:text={text}&_include:iterate=Observation:subject")
    assert [(e["search"]["mode"], e["resource"]["id"]) for e in r.json["entry"]] == [("match", oid), ("include", pid)]
    r = client.get(f"/fhir/Patient?_id={pid}&_revinclude:iterate=Observation:subject")
    included = {e["resource"]["id"] for e in r.json["entry"] if e["search"]["mode"] == "include"}
    assert oid in included


# -- F5, F9: parameters the server does not apply ------------------------------------------------------------------

def test_at_and_offset_are_refused_not_ignored(client, pid):
    post(client, "Observation", obs(pid))
    for path in ("_history", "Observation/_history", f"Patient/{pid}/_history"):
        r = client.get(f"/fhir/{path}?_at=2024")
        assert r.status_code == 400 and expression(r) == ["_at"]
    r = client.get("/fhir/Observation?_offset=1")
    assert r.status_code == 400 and expression(r) == ["_offset"]
    r = client.post("/fhir/Observation/_search", data="_offset=20", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400 and expression(r) == ["_offset"]
    assert client.get("/fhir/Observation?_offset=0").status_code == 200
    statement = json.dumps(client.get("/fhir/metadata").json)
    assert '"_offset"' not in statement and '"_at"' not in statement


def test_since_with_an_unencoded_plus_in_its_zone(client):
    r = client.get("/fhir/_history?_since=2024-01-01T00:00:00+05:00")  # '+' arrives as a space
    assert r.status_code == 200


# -- F61: HEAD --------------------------------------------------------------------------------------------------

def test_head_is_get_without_a_body(client, pid):
    for path in (f"Patient/{pid}", "metadata", "Observation?_count=1"):
        get, head = client.get(f"/fhir/{path}"), client.head(f"/fhir/{path}")
        assert head.status_code == 200 and get.status_code == 200, path
        assert head.get_data() == b"" and head.headers["Content-Type"] == get.headers["Content-Type"]
    assert client.head(f"/fhir/Patient/{pid}").headers["ETag"] == 'W/"1"'
    assert client.head("/fhir/Patient/nope").status_code == 404


# -- F42, F43: Prefer: return ------------------------------------------------------------------------------------

def test_prefer_return_changes_writes_only_and_empty_answers_have_no_content_type(client, pid):
    r = post(client, "Observation", obs(pid), Prefer="return=minimal")
    assert r.status_code == 201 and r.get_data() == b"" and "Content-Type" not in r.headers
    assert r.headers["Preference-Applied"] == "return=minimal" and r.headers["Location"]
    oid = r.headers["Location"].split("/")[-3]
    for prefer in ("return=minimal", "return=OperationOutcome"):
        read = client.get(f"/fhir/Observation/{oid}", headers={"Prefer": prefer})
        assert read.status_code == 200 and read.json["resourceType"] == "Observation" and read.json["id"] == oid
        vread = client.get(f"/fhir/Observation/{oid}/_history/1", headers={"Prefer": prefer})
        assert vread.json["resourceType"] == "Observation"
    r = put(client, f"Observation/{oid}", {**obs(pid, "u"), "id": oid}, Prefer="return=minimal")
    assert r.status_code == 200 and r.get_data() == b"" and "Content-Type" not in r.headers
    r = client.get(f"/fhir/Observation/{oid}", headers={"If-None-Match": 'W/"2"'})
    assert r.status_code == 304 and "Content-Type" not in r.headers


def test_a_search_with_thousands_of_alternatives_is_refused_not_run(client):
    """15,000 references in one `subject=` held a worker for 10 s (one lookup each): beyond 1,000 values in all the
    search is refused, naming the parameter; 1,000 still run."""
    many = ",".join(f"Patient/p{i}" for i in range(1001))
    r = client.post("/fhir/Observation/_search", data={"subject": many},
                    content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400 and r.json["issue"][0]["code"] == "too-costly", r.json
    assert r.json["issue"][0]["expression"] == ["subject"]
    enough = client.post("/fhir/Observation/_search", data={"subject": ",".join(many.split(",")[:1000])},
                         content_type="application/x-www-form-urlencoded")
    assert enough.status_code == 200, enough.json


def _fhirpath_patch(client, rtype: str, rid: str, *operations: dict) -> Any:
    def part(name: str, value: Any) -> dict:
        key = {str: "valueString", int: "valueInteger"}.get(type(value), "valueHumanName")
        if name in ("type",):
            key = "valueCode"
        return {"name": name, key: value}

    body = {"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [part(k, v) for k, v in op.items()]} for op in operations]}
    return client.patch(f"/fhir/{rtype}/{rid}", data=json.dumps(body), content_type="application/fhir+json")


def test_fhirpath_patch_insert_and_move_work_on_a_repeating_element(client):
    """FHIRPath Patch insert and move never worked: the path of a list named its items ("names 2 elements", "is not
    a list"). They take the repeating element now (fhirpatch.html), and `add` knows from the R4 definitions which
    elements repeat (it made `performer` an object)."""
    pid = client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient", "name": [
        {"family": "甲"}, {"family": "乙"}]}), content_type="application/fhir+json").json["id"]
    r = _fhirpath_patch(client, "Patient", pid,
                        {"type": "insert", "path": "Patient.name", "index": 1, "value": {"family": "丙"}})
    assert r.status_code == 200, r.json
    assert [n["family"] for n in r.json["name"]] == ["甲", "丙", "乙"]
    r = _fhirpath_patch(client, "Patient", pid, {"type": "move", "path": "Patient.name", "source": 2,
                                                 "destination": 0})
    assert r.status_code == 200, r.json
    assert [n["family"] for n in r.json["name"]] == ["乙", "甲", "丙"]
    r = _fhirpath_patch(client, "Patient", pid, {"type": "insert", "path": "Patient.gender", "index": 0,
                                                 "value": "male"})
    assert r.status_code == 422, r.json  # gender does not repeat
    oid = client.post("/fhir/Observation", data=json.dumps({"resourceType": "Observation", "status": "final",
                                                            "code": {"text": "x"}}),
                      content_type="application/fhir+json").json["id"]
    org = client.post("/fhir/Organization", data=json.dumps({"resourceType": "Organization", "name": "院"}),
                      content_type="application/fhir+json").json["id"]
    body = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Observation"},
        {"name": "name", "valueString": "performer"},
        {"name": "value", "valueReference": {"reference": f"Organization/{org}"}}]}]}
    r = client.patch(f"/fhir/Observation/{oid}", data=json.dumps(body), content_type="application/fhir+json")
    assert r.status_code == 200 and r.json["performer"] == [{"reference": f"Organization/{org}"}], r.json


@pytest.mark.parametrize("ref", ["urn:uuid:3f2a6c1e-0000-4000-8000-000000000001", "Patient?name=张三", "Foo/1"])
def test_a_reference_that_can_name_nothing_is_refused_outside_a_transaction(client, ref):
    """A urn:uuid or a conditional reference names something only in a transaction, which resolves it; in a create,
    or a batch entry, it was stored as it was, a reference nothing resolves. So was one to a type no server has."""
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": ref}}
    r = client.post("/fhir/Observation", data=json.dumps(obs), content_type="application/fhir+json")
    assert r.status_code == 422 and r.json["issue"][0]["expression"] == ["Observation.subject.reference"], r.json
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": obs, "request": {"method": "POST", "url": "Observation"}}]}
    r = client.post("/fhir", data=json.dumps(batch), content_type="application/fhir+json")
    assert r.status_code == 200 and r.json["entry"][0]["response"]["status"].startswith("422"), r.json


def test_a_stored_document_bundle_keeps_the_references_between_its_entries(client):
    doc = {"resourceType": "Bundle", "type": "document", "identifier": {"system": "urn:x", "value": "d1"},
           "timestamp": "2026-11-30T10:00:00+08:00", "entry": [
               {"fullUrl": "urn:uuid:3f2a6c1e-0000-4000-8000-00000000000a",
                "resource": {"resourceType": "Composition", "status": "final", "type": {"text": "出院小结"},
                             "date": "2026-11-30", "title": "出院小结", "author": [{"display": "医生"}],
                             "subject": {"reference": "urn:uuid:3f2a6c1e-0000-4000-8000-00000000000b"}}},
               {"fullUrl": "urn:uuid:3f2a6c1e-0000-4000-8000-00000000000b",
                "resource": {"resourceType": "Patient", "name": [{"family": "文"}]}}]}
    r = client.post("/fhir/Bundle", data=json.dumps(doc), content_type="application/fhir+json")
    assert r.status_code == 201, r.json


@pytest.mark.parametrize("accept,status,media", [
    ("application/fhir+xml;q=0.1, application/fhir+json;q=0.9", 200, "application/fhir+json"),  # q decides
    ("application/fhir+json;q=0.0", 406, None),  # q=0 refuses, in any spelling
    ("application/fhir+json;q=0", 406, None),
    ("application/fhir+json; fhirVersion=5.0, application/fhir+xml; fhirVersion=4.0", 200, "application/fhir+xml"),
    ("application/fhir+json; fhirVersion=5.0", 406, None),  # every offer another version
    ("text/html, */*;q=0.1", 200, "application/fhir+json"),
])
def test_accept_is_read_with_its_quality_values_and_versions(client, accept, status, media):
    """The first acceptable type won whatever its q (q=0.0 was even taken as acceptable), and one Accept part naming
    another FHIR version refused the request although another part offered 4.0."""
    r = client.get("/fhir/metadata", headers={"Accept": accept})
    assert r.status_code == status, (accept, r.status_code)
    if media:
        assert r.headers["Content-Type"].startswith(media), (accept, r.headers["Content-Type"])


@pytest.mark.parametrize("fmt,media", [
    ("JSON", "application/fhir+json"), ("application/json+fhir", "application/fhir+json"),
    ("application/fhir+json;fhirVersion=4.0", "application/fhir+json"),
    ("application/fhir+xml; charset=utf-8", "application/fhir+xml")])
def test_format_takes_the_media_types_accept_would(client, fmt, media):
    r = client.get("/fhir/metadata", query_string={"_format": fmt})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith(media), (fmt, r.status_code)
    assert client.get("/fhir/metadata", query_string={"_format": "application/fhir+json;fhirVersion=3.0"}
                      ).status_code == 406


@pytest.mark.parametrize("charset", ["utf-16", "gbk"])
def test_a_body_declared_in_another_charset_is_415(client, charset):
    """FHIR bodies are UTF-8: a body declared utf-16 was read as UTF-8 and stored, one declared gbk got a 400."""
    body = json.dumps({"resourceType": "Patient", "name": [{"family": "字"}]}, ensure_ascii=False).encode()
    r = client.post("/fhir/Patient", data=body, content_type=f"application/fhir+json; charset={charset}")
    assert r.status_code == 415 and r.json["issue"][0]["expression"] == ["Content-Type"], r.json
    ok = client.post("/fhir/Patient", data=body, content_type="application/fhir+json; charset=UTF-8")
    assert ok.status_code == 201


@pytest.mark.parametrize("value", ["5_1", "٣", "5.4.1"])
def test_a_number_search_value_is_a_fhir_decimal(client, value):
    """Python's Decimal read "5_1" as 51 and Arabic-Indic digits as numbers: the search ran for a value nobody
    wrote. Search values of number and quantity parameters are FHIR decimals (400 naming the parameter)."""
    r = client.get("/fhir/Observation", query_string={"value-quantity": value})
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["value-quantity"], r.json


def test_a_searchsets_outcome_entry_has_a_uuid_full_url(client):
    """R4 Bundle.entry.fullUrl: a urn:uuid is a UUID (RFC 4122). The outcome entry was `urn:uuid:search-outcome`."""
    import uuid as uuidlib

    r = client.get("/fhir/Observation", query_string={"unknown-param": "x"})  # a warning: an outcome entry
    outcome = [e for e in r.json["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["fullUrl"].startswith("urn:uuid:")
    uuidlib.UUID(outcome[0]["fullUrl"][len("urn:uuid:"):])  # raises when it is not one
