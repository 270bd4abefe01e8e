"""FHIR RESTful HTTP semantics outside search (R4 http.html, fhirpatch.html, RFC 9110): what a 405 allows,
conditional update that creates with the body's id, FHIRPath Patch deletes that empty an element."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

FJ = "application/fhir+json"


def post(client: Any, path: str, body: dict[str, Any], **headers: str) -> Any:
    return client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ, headers=headers)


def org(name: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Organization", "name": name, **extra}


def fhirpath_delete(*paths: str) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": p}]}
        for p in paths]}


# -- 405 says what is allowed (RFC 9110 §15.5.6) ------------------------------------------------------------

def test_a_405_of_the_router_names_the_methods_the_url_allows(client):
    oid = post(client, "Organization", org("allow")).json["id"]
    cases = [
        (client.put, f"/fhir/Organization/{oid}/_history/1", "GET, HEAD"),
        (client.delete, "/fhir/Organization/_history", "GET, HEAD"),
        (client.post, f"/fhir/Organization/{oid}", "GET, HEAD, PUT, PATCH, DELETE"),
        (client.post, "/fhir/metadata", "GET, HEAD"),
        (client.put, "/fhir/Patient/x/Observation", "GET, HEAD"),
    ]
    for call, url, allowed in cases:
        r = call(url, data="{}", content_type=FJ)
        assert r.status_code == 405, url
        assert r.headers.get("Allow") == allowed, url


def test_a_405_for_an_interaction_the_type_does_not_offer_names_what_it_does(client):
    # AuditEvent is read and search only (resource-types.json)
    r = post(client, "AuditEvent", {"resourceType": "AuditEvent"})
    assert r.status_code == 405 and r.headers.get("Allow") == "GET, HEAD"
    r = client.delete("/fhir/AuditEvent/x")
    assert r.status_code == 405 and r.headers.get("Allow") == "GET, HEAD"
    r = client.delete("/fhir/AuditEvent?_id=x")
    assert r.status_code == 405 and r.headers.get("Allow") == "GET, HEAD"
    r = client.get("/fhir/AuditEvent/_history")
    assert r.status_code == 405 and r.headers.get("Allow") == ""  # no method at all (RFC 9110 §10.2.1)


def test_a_405_of_an_operation_names_the_methods_the_operation_accepts(client):
    r = client.get("/fhir/Patient/$match")  # $match is POST only (it takes a resource)
    assert r.status_code == 405 and r.headers.get("Allow") == "POST"
    r = client.get("/fhir/$ehc-verify")
    assert r.status_code == 405 and r.headers.get("Allow") == "POST"


def test_a_method_no_route_takes_is_a_405_that_names_those_that_are_taken(client):
    r = client.open("/fhir/Patient", method="TRACE")
    assert r.status_code == 405 and r.json["resourceType"] == "OperationOutcome"
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= {m.strip() for m in r.headers["Allow"].split(",")}


# -- conditional update (http.html#cond-update) -------------------------------------------------------------

def test_a_conditional_update_that_matches_nothing_does_not_overwrite_the_resource_its_id_names(client):
    victim = post(client, "Organization", org("victim")).json
    name = uuid.uuid4().hex
    r = client.put(f"/fhir/Organization?name={name}", data=json.dumps(org(name, id=victim["id"])), content_type=FJ)
    assert r.status_code == 409, r.json
    assert r.json["issue"][0]["expression"] == ["id"]
    after = client.get(f"/fhir/Organization/{victim['id']}")
    assert after.json["name"] == "victim" and after.headers["ETag"] == 'W/"1"'


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_conditional_update_entry_that_matches_nothing_does_not_overwrite_the_resource_its_id_names(client, kind):
    victim = post(client, "Organization", org("victim")).json
    name = uuid.uuid4().hex
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": org(name, id=victim["id"]), "request": {"method": "PUT", "url": f"Organization?name={name}"}}]}
    r = post(client, "", bundle)
    if kind == "transaction":
        assert r.status_code == 409 and r.json["issue"][0]["expression"] == ["Bundle.entry[0].resource.id"], r.json
    else:
        assert r.status_code == 200 and r.json["entry"][0]["response"]["status"].startswith("409"), r.json
    after = client.get(f"/fhir/Organization/{victim['id']}")
    assert after.json["name"] == "victim" and after.headers["ETag"] == 'W/"1"'


def test_a_conditional_update_that_matches_nothing_creates_with_a_new_or_deleted_id(client):
    name = uuid.uuid4().hex
    rid = f"cu-{name[:20]}"
    r = client.put(f"/fhir/Organization?name={name}", data=json.dumps(org(name, id=rid)), content_type=FJ)
    assert r.status_code == 201 and r.json["id"] == rid
    assert r.headers["Location"].endswith(f"/Organization/{rid}/_history/1")
    gone = post(client, "Organization", org("deleted")).json["id"]
    assert client.delete(f"/fhir/Organization/{gone}").status_code == 200
    name = uuid.uuid4().hex
    r = client.put(f"/fhir/Organization?name={name}", data=json.dumps(org(name, id=gone)), content_type=FJ)
    assert r.status_code in (200, 201) and r.json["id"] == gone and r.json["name"] == name
    # one match: the body's id must be that match's (400 otherwise), or absent
    r = client.put(f"/fhir/Organization?name={name}", data=json.dumps(org(name, id=rid)), content_type=FJ)
    assert r.status_code == 400


# -- FHIRPath Patch delete (fhirpatch.html) -----------------------------------------------------------------

def test_a_fhirpath_delete_that_empties_an_element_removes_the_element(client):
    target = post(client, "Organization", org("target")).json["id"]
    oid = post(client, "Organization", org("fp", partOf={"reference": f"Organization/{target}"},
                                             telecom=[{"system": "phone", "value": "1"},
                                                      {"system": "email", "value": "e@x.cn"}])).json["id"]
    r = client.patch(f"/fhir/Organization/{oid}", data=json.dumps(fhirpath_delete("Organization.partOf.reference")),
                     content_type=FJ)
    assert r.status_code == 200, r.json
    assert "partOf" not in r.json
    r = client.patch(f"/fhir/Organization/{oid}", content_type=FJ, data=json.dumps(
        fhirpath_delete("Organization.telecom[0].value", "Organization.telecom[0].system")))
    assert r.status_code == 200, r.json
    assert r.json["telecom"] == [{"system": "email", "value": "e@x.cn"}]
    assert client.get(f"/fhir/Organization/{oid}").json["telecom"] == [{"system": "email", "value": "e@x.cn"}]


# -- content negotiation (RFC 9110 §12.5.1) -----------------------------------------------------------------

def test_the_json_type_answered_is_one_the_accept_header_takes(client):
    oid = post(client, "Organization", org("accept")).json["id"]
    for accept, answered in [("text/*", "text/json"),
                             ("application/fhir+json;q=0, application/json;q=0, */*", "application/json+fhir"),
                             ("application/json+fhir", "application/json+fhir"),
                             ("application/json", "application/json"),
                             ("*/*", FJ), ("application/fhir+json;q=0.5, application/*;q=0.9", "application/json")]:
        r = client.get(f"/fhir/Organization/{oid}", headers={"Accept": accept})
        assert r.status_code == 200 and r.mimetype == answered, accept
        assert json.loads(r.data)["id"] == oid


# -- history paging (http.html#history) ---------------------------------------------------------------------

def _pages(client: Any, url: str) -> list[tuple[str, str]]:
    """(fullUrl, etag) of every entry of a history, following its next links."""
    seen: list[tuple[str, str]] = []
    for _ in range(100):
        page = client.get(url).json
        seen += [(e["fullUrl"], e["response"]["etag"]) for e in page["entry"]]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            return seen
        url = urlsplit(nxt[0]).path + "?" + urlsplit(nxt[0]).query
    raise AssertionError("the history does not end")


def test_type_and_system_history_page_through_every_version_a_transaction_wrote(client):
    # a transaction's versions share one lastUpdated: more of them than a page (and its look-ahead) must all show
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": org(f"tx {i}"), "request": {"method": "POST", "url": "Organization"}} for i in range(60)]}
    r = post(client, "", bundle)
    assert r.status_code == 200
    written = {e["response"]["location"].rsplit("/_history/", 1)[0] for e in r.json["entry"]}
    for url in ("/fhir/Organization/_history?_count=10", "/fhir/_history?_count=10"):
        seen = _pages(client, url)
        assert len(seen) == len(set(seen)), url  # no version twice
        assert written <= {full for full, _ in seen}, (url, len(written - {full for full, _ in seen}))


# -- PATCH bodies (http.html#patch) --------------------------------------------------------------------------

def test_a_fhirpath_patch_in_xml_is_applied(client):
    from app.fhir.structure import load_structure
    from app.fhir.xml import to_xml
    from app.profiles import PROFILES_DIR

    oid = post(client, "Organization", org("xml patch", alias=["gone"])).json["id"]
    body = to_xml(load_structure(PROFILES_DIR), fhirpath_delete("Organization.alias"))
    r = client.patch(f"/fhir/Organization/{oid}", data=body, content_type="application/fhir+xml")
    assert r.status_code == 200, r.data
    assert "alias" not in client.get(f"/fhir/Organization/{oid}").json


def test_a_json_patch_in_another_charset_is_refused(client):
    oid = post(client, "Organization", org("charset")).json["id"]
    patch = json.dumps([{"op": "replace", "path": "/name", "value": "café"}]).encode("latin-1")
    r = client.patch(f"/fhir/Organization/{oid}", data=patch,
                     content_type="application/json-patch+json; charset=latin1")
    assert r.status_code == 415 and r.json["issue"][0]["expression"] == ["Content-Type"]
    assert client.get(f"/fhir/Organization/{oid}").json["name"] == "charset"
