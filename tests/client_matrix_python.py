"""The Python clients of the smoke matrix (tests/client_matrix.py): fhirpy's SyncFHIRClient and smart-on-fhir's
fhirclient, whose R4 models parse every response strictly (an unknown element or a wrong JSON type raises).
Each step uses the client's own API where it has one; where it has none (fhirpy's vread, history, compartment
and transaction; fhirclient's vread, history and compartment), the client's generic request method on the path
FHIR defines, so that the response still goes through the client's parsing and error handling."""

from __future__ import annotations

import copy
import importlib
import uuid
from typing import Any

from tests.client_matrix import Cells, expect, run_steps

TAG = {"system": "http://example.org/tags", "code": "client-matrix"}
JSON_ONLY = "n/a: {} reads and writes JSON only"
BUNDLE_CREATE = "n/a: fhirpy's save() posts a new Bundle to the base as a batch; stored with execute('Bundle')"


def transaction_bundle(entry: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": copy.deepcopy(entry["resource"]),
        "request": {"method": "POST", "url": entry["type"]}}]}


def transaction_id(response: dict[str, Any], rtype: str) -> str:
    """The id of the one resource a transaction created, from its response entry."""
    expect(response.get("type") == "transaction-response", f"bundle type {response.get('type')}")
    entries = response.get("entry") or []
    expect(len(entries) == 1, f"{len(entries)} response entries")
    status = entries[0]["response"]["status"]
    expect(status.startswith("201"), f"status {status}")
    parts = entries[0]["response"]["location"].split("/")
    expect(parts[-4] == rtype and parts[-2] == "_history", f"location {entries[0]['response']['location']}")
    return str(parts[-3])


def page_ids(bundle: dict[str, Any]) -> list[str]:
    return [str(e["resource"]["id"]) for e in bundle.get("entry") or []
            if (e.get("search") or {}).get("mode", "match") == "match"]


def compartment_ok(ids: list[str], state: dict[str, Any], entry: dict[str, Any], patient: str) -> str:
    if entry["type"] == "Patient":
        expect(ids == [patient], f"Patient/{patient}/Patient gave {ids}")
    elif entry["member"]:
        expect({state["id"], state["tx"]} <= set(ids), f"compartment gave {ids}, not {state['id']}, {state['tx']}")
    return "ok"


# -- fhirpy -----------------------------------------------------------------------------------------------------

def fhirpy_matrix(spec_doc: dict[str, Any]) -> Cells:
    from fhirpy import SyncFHIRClient
    from fhirpy.base.exceptions import ResourceNotFound

    client = SyncFHIRClient(spec_doc["base"], authorization=f"Bearer {spec_doc['token']}",
                            requests_config={"timeout": 30})
    pid = spec_doc["patient"]

    def create(state: dict[str, Any], e: dict[str, Any]) -> str:
        body = copy.deepcopy(e["resource"])
        body.pop("resourceType")
        res = client.resource(e["type"], **body)
        if e["type"] == "Bundle":
            # save() sends every new Bundle to the service base, as a batch or transaction
            res = client.resource("Bundle", **client.execute("Bundle", method="post", data=res.serialize()))
            cell = BUNDLE_CREATE
        else:
            res.save()
            cell = "ok"
        expect(bool(res.id) and res["meta"]["versionId"] == "1", f"created {res.get('meta')}")
        state["res"], state["id"] = res, res.id
        return cell

    def read(state: dict[str, Any], e: dict[str, Any]) -> str:
        got = client.reference(e["type"], state["id"]).to_resource()
        expect(got.id == state["id"] and got.resourceType == e["type"], f"read {got.resourceType}/{got.id}")
        return "ok"

    def update(state: dict[str, Any], e: dict[str, Any]) -> str:
        res = state["res"]
        res["meta"] = {"tag": [TAG]}
        res.save()
        expect(res["meta"]["versionId"] == "2", f"updated to {res['meta']}")
        return "ok"

    def vread(state: dict[str, Any], e: dict[str, Any]) -> str:
        old = client.reference(e["type"], state["id"]).execute("_history/1", method="get")
        expect(old["id"] == state["id"] and old["meta"]["versionId"] == "1", f"vread {old.get('meta')}")
        return "ok"

    def history(state: dict[str, Any], e: dict[str, Any]) -> str:
        bundle = state["res"].execute("_history", method="get")
        versions = [x["resource"]["meta"]["versionId"] for x in bundle.get("entry", [])]
        expect(versions == ["2", "1"], f"history versions {versions}")
        return "ok"

    def search(state: dict[str, Any], e: dict[str, Any]) -> str:
        found = client.resources(e["type"]).search(_id=state["id"]).fetch()
        expect([r.id for r in found] == [state["id"]], f"search gave {[r.id for r in found]}")
        return "ok"

    def transaction(state: dict[str, Any], e: dict[str, Any]) -> str:
        state["tx"] = transaction_id(client.execute("", method="post", data=transaction_bundle(e)), e["type"])
        return "ok"

    def paging(state: dict[str, Any], e: dict[str, Any]) -> str:
        query = client.resources(e["type"]).search(_id=f"{state['id']},{state['tx']}").limit(1)
        first = query.fetch_raw()
        expect(len(first.get("entry", [])) == 1 and any(li["relation"] == "next" for li in first.get("link", [])),
               "first page of _count=1 has not one entry and a next link")
        ids = sorted(r.id for r in query.fetch_all())  # fetch_all follows the next links
        expect(ids == sorted([state["id"], state["tx"]]), f"pages gave {ids}")
        return "ok"

    def compartment(state: dict[str, Any], e: dict[str, Any]) -> str:
        if not e["compartment"]:
            return "n/a: not in the patient compartment"
        bundle = client.reference("Patient", pid).execute(e["type"], method="get")
        return compartment_ok(page_ids(bundle), state, e, pid)

    def xml(state: dict[str, Any], e: dict[str, Any]) -> str:
        return JSON_ONLY.format("fhirpy")

    def delete(state: dict[str, Any], e: dict[str, Any]) -> str:
        state["res"].delete()
        try:
            client.reference(e["type"], state["id"]).to_resource()
        except ResourceNotFound:
            return "ok"
        raise AssertionError("read after delete did not fail")

    return run_steps(spec_doc, {"create": create, "read": read, "update": update, "vread": vread,
                                "history": history, "search": search, "transaction": transaction,
                                "paging": paging, "compartment": compartment, "xml-read": xml, "xml-create": xml,
                                "delete": delete})


# -- fhirclient -------------------------------------------------------------------------------------------------

def fhirclient_matrix(spec_doc: dict[str, Any]) -> Cells:
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.meta import Meta
    from fhirclient.server import FHIRServer
    from requests import HTTPError

    server = FHIRServer(None, base_uri=spec_doc["base"])
    server.session.headers["Authorization"] = f"Bearer {spec_doc['token']}"
    pid = spec_doc["patient"]

    def model(rtype: str) -> Any:
        return getattr(importlib.import_module(f"fhirclient.models.{rtype.lower()}"), rtype)

    def create(state: dict[str, Any], e: dict[str, Any]) -> str:
        cls = model(e["type"])
        created = cls(cls(copy.deepcopy(e["resource"]), strict=True).create(server), strict=True)
        expect(bool(created.id) and created.meta.versionId == "1", "created without id or version 1")
        state["id"] = created.id
        return "ok"

    def read(state: dict[str, Any], e: dict[str, Any]) -> str:
        got = model(e["type"]).read(state["id"], server)
        expect(got.id == state["id"], f"read {got.id}")
        state["res"] = got
        return "ok"

    def update(state: dict[str, Any], e: dict[str, Any]) -> str:
        res = state["res"]
        res.meta = Meta({"tag": [TAG]}, strict=True)
        updated = model(e["type"])(res.update(server), strict=True)
        expect(updated.meta.versionId == "2", f"updated to {updated.meta.versionId}")
        return "ok"

    def vread(state: dict[str, Any], e: dict[str, Any]) -> str:
        old = model(e["type"]).read_from(f"{e['type']}/{state['id']}/_history/1", server)
        expect(old.id == state["id"] and old.meta.versionId == "1", f"vread {old.meta.versionId}")
        return "ok"

    def history(state: dict[str, Any], e: dict[str, Any]) -> str:
        bundle = Bundle.read_from(f"{e['type']}/{state['id']}/_history", server)
        versions = [x.resource.meta.versionId for x in bundle.entry or []]
        expect(versions == ["2", "1"], f"history versions {versions}")
        return "ok"

    def search(state: dict[str, Any], e: dict[str, Any]) -> str:
        found = list(model(e["type"]).where({"_id": state["id"]}).perform_resources_iter(server))
        expect([r.id for r in found] == [state["id"]], f"search gave {[r.id for r in found]}")
        return "ok"

    def transaction(state: dict[str, Any], e: dict[str, Any]) -> str:
        response = Bundle(Bundle(transaction_bundle(e), strict=True).create(server), strict=True)
        state["tx"] = transaction_id(response.as_json(), e["type"])
        return "ok"

    def paging(state: dict[str, Any], e: dict[str, Any]) -> str:
        query = model(e["type"]).where({"_id": f"{state['id']},{state['tx']}", "_count": "1"})
        pages = list(query.perform_iter(server))  # follows the next links
        sizes = [len(p.entry or []) for p in pages]
        ids = sorted(x.resource.id for p in pages for x in p.entry or [])
        expect(sizes == [1, 1] and ids == sorted([state["id"], state["tx"]]), f"pages {sizes} gave {ids}")
        return "ok"

    def compartment(state: dict[str, Any], e: dict[str, Any]) -> str:
        if not e["compartment"]:
            return "n/a: not in the patient compartment"
        bundle = Bundle.read_from(f"Patient/{pid}/{e['type']}", server)
        return compartment_ok(page_ids(bundle.as_json()), state, e, pid)

    def xml(state: dict[str, Any], e: dict[str, Any]) -> str:
        return JSON_ONLY.format("fhirclient")

    def delete(state: dict[str, Any], e: dict[str, Any]) -> str:
        state["res"].delete(server)
        try:
            model(e["type"]).read(state["id"], server)
        except HTTPError as exc:
            expect(exc.response.status_code == 410, f"read after delete: {exc.response.status_code}")
            return "ok"
        raise AssertionError("read after delete did not fail")

    return run_steps(spec_doc, {"create": create, "read": read, "update": update, "vread": vread,
                                "history": history, "search": search, "transaction": transaction,
                                "paging": paging, "compartment": compartment, "xml-read": xml, "xml-create": xml,
                                "delete": delete})
