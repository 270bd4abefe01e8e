"""Request bodies of the wrong shape: every $operation's Parameters and every Bundle entry answer 400 with an
OperationOutcome naming the element, never a 500, and a transaction that is refused stores nothing.

The cases are the ones a type-mutation sweep found answering 500 (each value of a valid body replaced by a value
of another JSON type); the sweep itself runs at the end, over the same bodies, so a new handler that reads a
body without checking it is caught too."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_mpi_registration import ID_SYS, id_number, patient

FJ = "application/fhir+json"


@pytest.fixture(scope="module")
def ids(app: Any) -> dict[str, str]:
    client = app.test_client()
    pid = client.post("/fhir/Patient", data=json.dumps(patient(id_number("110101", "1980-05-05", 7), name="形状")),
                      content_type=FJ).json["id"]
    oid = client.post("/fhir/Observation", data=json.dumps(observation(pid)), content_type=FJ).json["id"]
    return {"patient": pid, "observation": oid}


def observation(pid: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
            "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 5.1, "unit": "mmol/L"}}


def bodies(ids: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """A valid body for each route that reads one (the sweep's starting points)."""
    pid, oid = ids["patient"], ids["observation"]
    ident = {"system": ID_SYS, "value": id_number("110101", "1980-05-05", 7)}
    patch = base64.b64encode(json.dumps([{"op": "replace", "path": "/status", "value": "amended"}]).encode()).decode()
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5b1c0d7e-0000-4000-8000-000000000001", "resource": observation(pid),
         "request": {"method": "POST", "url": "Observation", "ifNoneExist": "code=x|y"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
         "request": {"method": "PATCH", "url": f"Observation/{oid}", "ifMatch": 'W/"1"'}},
        {"request": {"method": "DELETE", "url": "Observation?code=zz|zz"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}", "ifNoneMatch": 'W/"1"'}}]}
    return {
        ("POST", "$ehc-verify"): {"resourceType": "Parameters", "parameter": [{"name": "token", "valueString": "x"}]},
        ("POST", f"Patient/{pid}/$ehc-qrcode"): {"resourceType": "Parameters", "parameter": [
            {"name": "type", "valueCode": "dynamic"}, {"name": "validity", "valueInteger": 60},
            {"name": "image", "valueBoolean": False}]},
        ("POST", f"Patient/{pid}/$ehc-status"): {"resourceType": "Parameters", "parameter": [
            {"name": "status", "valueCode": "active"}, {"name": "reason", "valueString": "x"}]},
        ("POST", "Patient/$match"): {"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": patient(ident["value"], name="形状")},
            {"name": "count", "valueInteger": 3}, {"name": "onlyCertainMatches", "valueBoolean": True}]},
        ("POST", "Patient/$merge"): {"resourceType": "Parameters", "parameter": [
            {"name": "source-patient", "valueReference": {"reference": f"Patient/{pid}"}},
            {"name": "target-patient-identifier", "valueIdentifier": ident},
            {"name": "preview", "valueBoolean": True}]},
        ("POST", "Patient/$validate"): {"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": patient(ident["value"], name="形状")},
            {"name": "profile", "valueUri": "http://example.org/p"}]},
        ("PATCH", f"Patient/{pid}"): {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender"},
            {"name": "value", "valueCode": "male"}]}]},
        ("POST", "Observation"): observation(pid),
        ("PUT", f"Patient/{pid}"): {**patient(ident["value"], name="形状", gender="male"), "id": pid},
        ("POST", ""): transaction,
        ("POST", "?batch"): {**copy.deepcopy(transaction), "type": "batch"},
    }


def send(client: Any, method: str, path: str, body: Any) -> Any:
    return client.open(f"/fhir/{path.split('?')[0]}".rstrip("/"), method=method, data=json.dumps(body),
                       content_type=FJ)


def replaced(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = copy.deepcopy(body)
    node = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return body


CASES = [
    # (route key, path in the body, the wrong value, the expression the answer must name)
    ("$ehc-verify", ("parameter",), 5, "Parameters.parameter"),
    ("$ehc-verify", ("parameter", 0, "valueString"), 5, "Parameters.parameter[0].valueString"),
    ("$ehc-qrcode", ("parameter", 1, "valueInteger"), "60", "Parameters.parameter[1].valueInteger"),
    ("$ehc-qrcode", ("parameter", 2, "valueBoolean"), "false", "Parameters.parameter[2].valueBoolean"),
    ("$ehc-status", ("parameter", 0), 5, "Parameters.parameter[0].name"),
    ("$ehc-status", ("parameter", 1, "valueString"), ["x"], "Parameters.parameter[1].valueString"),
    ("$match", ("parameter", 0, "resource", "identifier"), 5, "Parameters.parameter[0].resource.identifier"),
    ("$match", ("parameter", 0, "resource", "name", 0, "given"), 5,
     "Parameters.parameter[0].resource.name[0].given"),
    ("$merge", ("parameter", 0, "valueReference"), "Patient/x", "Parameters.parameter[0].valueReference"),
    ("$merge", ("parameter", 0, "valueReference", "reference"), 5, "source-patient"),
    ("$validate", ("parameter", 1), 5, "Parameters.parameter[1].name"),
    ("PATCH", ("parameter", 0, "part"), 5, "Parameters.parameter[0].part"),
    ("PATCH", ("parameter",), {"name": "operation"}, "Parameters.parameter"),
    ("transaction", ("entry", 0, "request", "url"), 5, "Bundle.entry[0].request"),
    ("transaction", ("entry", 1, "request", "method"), ["PATCH"], "Bundle.entry[1].request"),
    ("transaction", ("entry", 1, "request", "ifMatch"), 1, "Bundle.entry[1].request.ifMatch"),
    ("transaction", ("entry", 0, "fullUrl"), ["urn:uuid:x"], "Bundle.entry[0].fullUrl"),
    ("transaction", ("entry", 0, "resource"), "Observation", "Bundle.entry[0].resource"),
    ("batch", ("entry", 0, "request", "ifNoneExist"), 5, "Bundle.entry[0].request.ifNoneExist"),
    ("batch", ("entry", 3, "request", "ifNoneMatch"), {"etag": 1}, "Bundle.entry[3].request.ifNoneMatch"),
    ("batch", ("entry", 1, "resource"), [], "Bundle.entry[1].resource"),
]


def route(all_bodies: dict[tuple[str, str], Any], name: str) -> tuple[str, str]:
    if name == "transaction":
        return "POST", ""
    if name == "batch":
        return "POST", "?batch"
    if name == "PATCH":
        return next(k for k in all_bodies if k[0] == "PATCH")
    return next(k for k in all_bodies if k[1].endswith(name))


@pytest.mark.parametrize(("name", "path", "value", "expression"), CASES,
                         ids=[f"{c[0]}:{'.'.join(map(str, c[1]))}" for c in CASES])
def test_a_body_of_the_wrong_shape_is_refused_naming_the_element(app, ids, name, path, value, expression):
    client = app.test_client()
    all_bodies = bodies(ids)
    method, url = route(all_bodies, name)
    before = client.get(f"/fhir/Observation/{ids['observation']}").json["meta"]["versionId"]
    r = send(client, method, url, replaced(all_bodies[(method, url)], path, value))
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.json["resourceType"] == "OperationOutcome"
    named = [e for issue in r.json["issue"] for e in issue.get("expression", [])]
    assert any(e.startswith(expression) for e in named), (named, r.json["issue"][0]["diagnostics"])
    # nothing was written: the transaction's PATCH of the Observation did not happen
    assert client.get(f"/fhir/Observation/{ids['observation']}").json["meta"]["versionId"] == before


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from paths(child, (*prefix, key))


def test_no_body_of_any_shape_gets_a_500(app, ids):
    """Every element of every body above, replaced in turn by a number, a string, a list and an object."""
    client = app.test_client()
    failures, sent = [], 0
    for (method, url), body in bodies(ids).items():
        for path in paths(body):
            for value in (5, "x", [], {"a": 1}):
                r = send(client, method, url, replaced(body, path, value))
                sent += 1
                if r.status_code >= 500:
                    failures.append((method, url, path, value, r.status_code))
    assert sent > 500 and not failures, (sent, failures[:10])


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_a_decimal_beyond_a_double_is_refused_naming_it(app, ids, number):
    """JSON allows 1e400; stored as a double it is infinity, which FerretDB refuses (a 500 then) and MongoDB
    would store. The validator refuses it, in a create and inside a transaction alike."""
    client = app.test_client()
    body = json.dumps(observation(ids["patient"])).replace('"value": 5.1', f'"value": {number}')
    r = client.post("/fhir/Observation", data=body, content_type=FJ)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.json["issue"][0]["expression"] == ["Observation.valueQuantity.value"]
    entry = '{"resource": ' + body + ', "request": {"method": "POST", "url": "Observation"}}'
    r = client.post("/fhir", data='{"resourceType": "Bundle", "type": "transaction", "entry": [' + entry + "]}",
                    content_type=FJ)
    assert r.status_code == 400
    assert r.json["issue"][0]["expression"] == ["Bundle.entry[0].resource.valueQuantity.value"]


def test_chinese_text_with_ideographic_spaces_is_accepted_and_control_characters_are_not(app):
    """The specification's string regex is XML Schema's, where \\s is space, tab, CR and LF. Compiled as a Python
    regex it refused U+3000, the full-width space Chinese input methods type ('张　三'), and U+00A0; it took U+0000
    and U+0001, which FHIR strings may not hold (and XML cannot)."""
    client = app.test_client()
    for text in ("张　三", "北京市　东城区", "a\u00a0b"):
        body = {"resourceType": "Patient", "name": [{"text": text}], "address": [{"text": text}]}
        r = client.post("/fhir/Patient", data=json.dumps(body, ensure_ascii=False), content_type=FJ)
        assert r.status_code == 201, (text, r.json)
        assert client.get(f"/fhir/Patient/{r.json['id']}").json["name"][0]["text"] == text
    for char in ("\x00", "\x01", "\x1f", "\ufffe"):
        body = {"resourceType": "Patient", "name": [{"text": f"a{char}b"}]}
        r = client.post("/fhir/Patient", data=json.dumps(body), content_type=FJ)
        assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["Patient.name[0].text"], r.json
        assert f"U+{ord(char):04X}" in r.json["issue"][0]["diagnostics"]
    # and \d is 0-9: a date in full-width digits (which Python's \d took, and int() read) is not a FHIR date
    r = client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient", "birthDate": "２０２０-０１-０１"}),
                    content_type=FJ)
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["Patient.birthDate"]


@pytest.mark.parametrize("where", ["resource", "operation", "bundle"])
def test_a_lone_surrogate_escape_is_refused_wherever_it_is(app, ids, where):
    """JSON's escape \\ud800 without its pair is not Unicode text: no UTF-8, BSON or XML can hold it. In a card
    status reason, a $merge identifier or a batch entry's url it ended in a 500."""
    client = app.test_client()
    path, body = {
        "resource": ("Patient", '{"resourceType": "Patient", "name": [{"text": "aLONEb"}]}'),
        "operation": (f"Patient/{ids['patient']}/$ehc-status", '{"resourceType": "Parameters", "parameter": ['
                      '{"name": "status", "valueCode": "suspended"}, {"name": "reason", "valueString": "LONE"}]}'),
        "bundle": ("", '{"resourceType": "Bundle", "type": "batch", "entry": '
                   '[{"request": {"method": "GET", "url": "Patient?name=LONE"}}]}'),
    }[where]
    r = client.post(f"/fhir/{path}".rstrip("/"), data=body.replace("LONE", "\\ud800"), content_type=FJ)
    assert r.status_code == 400 and "surrogate" in r.json["issue"][0]["diagnostics"], r.get_data(as_text=True)
    # a pair is one character (😀), and a backslash followed by 'ud800' is just text
    for text in ("\\ud83d\\ude00", "\\\\ud800"):
        r = client.post("/fhir/Patient", content_type=FJ,
                        data='{"resourceType": "Patient", "name": [{"text": "TEXT"}]}'.replace("TEXT", text))
        assert r.status_code == 201, text
