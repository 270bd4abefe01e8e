"""Races against a real multi-process server (gunicorn, 2 workers): concurrent updates with the same
If-Match give exactly one success; parallel conditional creates with the same criteria create one."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.live import LiveServer

FJ = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def server(db_uri, tmp_path_factory):
    live = LiveServer(db_uri, tmp_path_factory.mktemp("live")).start()
    yield live
    live.stop()


def test_same_if_match_exactly_one_wins(server):
    s = requests.Session()
    pat = s.post(f"{server.base}/Patient", data=json.dumps({"resourceType": "Patient", "gender": "male"}),
                 headers=FJ).json()
    pid = pat["id"]

    def attempt(i: int) -> int:
        body = {**pat, "name": [{"family": f"writer{i}"}]}
        r = requests.put(f"{server.base}/Patient/{pid}", data=json.dumps(body),
                         headers={**FJ, "If-Match": 'W/"1"'}, timeout=60)
        return r.status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(attempt, range(16)))
    assert codes.count(200) == 1, codes
    assert codes.count(412) == 15, codes
    final = s.get(f"{server.base}/Patient/{pid}").json()
    assert final["meta"]["versionId"] == "2"
    hist = s.get(f"{server.base}/Patient/{pid}/_history").json()
    assert [e["response"]["etag"] for e in hist["entry"]] == ['W/"2"', 'W/"1"']


def test_updates_without_if_match_lose_nothing(server):
    pid = requests.post(f"{server.base}/Patient", data=json.dumps({"resourceType": "Patient"}), headers=FJ).json()["id"]

    def attempt(i: int) -> int:
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": f"w{i}"}]}
        return requests.put(f"{server.base}/Patient/{pid}", data=json.dumps(body), headers=FJ, timeout=60).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(attempt, range(12)))
    assert codes == [200] * 12
    final = requests.get(f"{server.base}/Patient/{pid}").json()
    assert final["meta"]["versionId"] == "13"  # every write is a version, none overwrote another's number


def test_parallel_conditional_creates_make_one(server):
    body = json.dumps({"resourceType": "Organization", "name": "并发医院",
                       "identifier": [{"system": "urn:test:org", "value": "race-1"}]})

    def attempt(_i: int) -> tuple[int, str]:
        r = requests.post(f"{server.base}/Organization", data=body,
                          headers={**FJ, "If-None-Exist": "identifier=urn:test:org|race-1"}, timeout=60)
        return r.status_code, r.json()["id"]

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(attempt, range(12)))
    codes = [c for c, _ in results]
    assert codes.count(201) == 1, codes
    assert codes.count(200) == 11, codes
    assert len({i for _, i in results}) == 1
    found = requests.get(f"{server.base}/Organization?identifier=urn:test:org|race-1").json()
    assert found["total"] == 1



def _burst(attempt: Callable[[int], Any], n: int = 12) -> list[Any]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(attempt, range(n)))


def _emails(resource: dict[str, Any]) -> set[str]:
    return {t["value"] for t in resource.get("telecom", []) if t.get("system") == "email"}


def _with_email(server: Any, rtype: str, email: str, **fields: Any) -> str:
    body = {"resourceType": rtype, "telecom": [{"system": "email", "value": email}], **fields}
    r = requests.post(f"{server.base}/{rtype}", data=json.dumps(body), headers=FJ)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _add_email(i: int) -> list[dict[str, Any]]:
    return [{"op": "add", "path": "/telecom/-", "value": {"system": "email", "value": f"w{i}@example.cn"}}]


def test_concurrent_patches_without_if_match_all_apply(server):
    """A PATCH that names no version applies to the version there is: one that lost a race to another write is
    applied again to the new version, so every patch is kept and none is refused. (Before, the loser got 412
    Precondition Failed although it had given no precondition.)"""
    pid = _with_email(server, "Patient", "seed@example.cn")

    def attempt(i: int) -> int:
        return requests.patch(f"{server.base}/Patient/{pid}", data=json.dumps(_add_email(i)), timeout=60,
                              headers={"Content-Type": "application/json-patch+json"}).status_code

    codes = _burst(attempt)
    assert codes == [200] * 12, codes
    final = requests.get(f"{server.base}/Patient/{pid}").json()
    assert _emails(final) == {"seed@example.cn"} | {f"w{i}@example.cn" for i in range(12)}
    assert final["meta"]["versionId"] == "13"


def test_concurrent_transaction_patches_lose_nothing(server):
    """Each transaction that answers 200 has its patch in the record; one that lost the race answers 409 and
    changed nothing; the record stays writable. Before, a transaction patched the version it had read and
    wrote the result over whatever was there by then (200, and another's patch gone), and the undo of a
    transaction that lost its race put the old version back over the winner's: the winner's 200 was lost too,
    and the record, left behind its own history, refused every later write."""
    pid = _with_email(server, "Patient", "seed@example.cn")

    def attempt(i: int) -> int:
        patch = base64.b64encode(json.dumps(_add_email(i)).encode()).decode()
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
            "request": {"method": "PATCH", "url": f"Patient/{pid}"}}]}
        return requests.post(server.base, data=json.dumps(bundle), headers=FJ, timeout=60).status_code

    codes = _burst(attempt)
    assert set(codes) <= {200, 409} and 200 in codes, codes
    final = requests.get(f"{server.base}/Patient/{pid}").json()
    assert _emails(final) == {"seed@example.cn"} | {f"w{i}@example.cn" for i, c in enumerate(codes) if c == 200}
    assert final["meta"]["versionId"] == str(1 + codes.count(200))
    again = requests.put(f"{server.base}/Patient/{pid}", data=json.dumps({**final, "gender": "female"}), headers=FJ)
    assert again.status_code == 200, again.text


def test_concurrent_transaction_updates_keep_the_winners_version(server):
    """Transactions that replace one record at once: the record ends at the last winner's version, with its
    content, and stays writable."""
    oid = _with_email(server, "Organization", "org@example.cn", name="起点")

    def attempt(i: int) -> tuple[int, str | None]:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": {"resourceType": "Organization", "id": oid, "name": f"写者{i}"},
            "request": {"method": "PUT", "url": f"Organization/{oid}"}}]}
        r = requests.post(server.base, data=json.dumps(bundle), headers=FJ, timeout=60)
        return r.status_code, r.json()["entry"][0]["response"]["etag"] if r.status_code == 200 else None

    results = _burst(attempt)
    assert {c for c, _ in results} <= {200, 409}, results
    won = {etag: i for i, (c, etag) in enumerate(results) if c == 200}
    final = requests.get(f"{server.base}/Organization/{oid}").json()
    last = max(won, key=lambda e: int(e[3:-1]))
    assert final["meta"]["versionId"] == last[3:-1] and final["name"] == f"写者{won[last]}", (results, final)
    history = requests.get(f"{server.base}/Organization/{oid}/_history").json()
    assert history["total"] == 1 + len(won)
    again = requests.put(f"{server.base}/Organization/{oid}", data=json.dumps({**final, "name": "终点"}), headers=FJ)
    assert again.status_code == 200, again.text


def test_parallel_conditional_updates_and_transactions_make_one(server):
    """Conditional updates, conditional creates and their transaction entries with the same criteria, sent
    at once, make one resource between them: each waits for the one before it, then finds its resource.
    Before, conditional updates and transactions searched without waiting, and each that found nothing
    created a resource of its own."""
    criteria = "identifier=urn:test:org|race-2"

    def attempt(i: int) -> int:
        org = {"resourceType": "Organization", "name": f"机构{i}",
               "identifier": [{"system": "urn:test:org", "value": "race-2"}]}
        kind = i % 4
        if kind == 0:
            r = requests.put(f"{server.base}/Organization?{criteria}", data=json.dumps(org), headers=FJ, timeout=60)
        elif kind == 1:
            r = requests.post(f"{server.base}/Organization", data=json.dumps(org), timeout=60,
                              headers={**FJ, "If-None-Exist": criteria})
        else:
            request = {"method": "PUT", "url": f"Organization?{criteria}"} if kind == 2 else \
                {"method": "POST", "url": "Organization", "ifNoneExist": criteria}
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": org, "request": request}]}
            r = requests.post(server.base, data=json.dumps(bundle), headers=FJ, timeout=60)
        return r.status_code

    codes = _burst(attempt, 16)
    assert set(codes) <= {200, 201}, codes
    found = requests.get(f"{server.base}/Organization?{criteria}").json()
    assert found["total"] == 1, (codes, found["total"])


def test_concurrent_card_status_changes_keep_cancelled_final(server):
    """Suspensions, reactivations and one cancellation (注销) of a card at once: a cancellation that answered 200
    is final, and the card's record and the revocation list terminals read agree. Before, a reactivation that
    had read the card before the cancellation wrote "active" over it, and the card verified again."""
    from app.synthetic import check_char

    base = server.base.rsplit("/fhir", 1)[0]
    for k in range(12):
        number = f"11010119800101{2 * k + 1:03d}"
        patient = {"resourceType": "Patient", "name": [{"family": "赵", "given": ["六"]}], "gender": "male",
                   "birthDate": "1980-01-01",
                   "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number + check_char(number)}]}
        pid = requests.post(f"{server.base}/Patient", data=json.dumps(patient), headers=FJ).json()["id"]
        changes = ["active", "suspended"] * 12
        changes.insert(12, "cancelled")

        def change(status: str, pid: str = pid) -> int:
            body = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": status}]}
            return requests.post(f"{server.base}/Patient/{pid}/$ehc-status", data=json.dumps(body), headers=FJ,
                                 timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(change, changes))
        assert codes[12] == 200 and set(codes) <= {200, 409}, codes
        state = {p["name"]: p for p in requests.get(f"{server.base}/Patient/{pid}/$ehc-status").json()["parameter"]}
        listed = {c["ehcId"]: c["status"] for c in requests.get(f"{base}/ehc/revocations").json()["cards"]}
        assert state["status"]["valueCode"] == "cancelled", codes
        assert listed.get(state["ehcId"]["valueString"]) == "cancelled"


def test_a_record_and_a_new_reference_to_it_at_once_leave_nothing_dangling(server):
    """A Patient deleted while Observations of it are created: either the delete is refused (409, the new records
    refer to it) or the creates are (422, it is gone); never both through. Before, in 15 of 20 rounds the delete
    and a create both succeeded, leaving Observations of a deleted Patient: each had checked the other before
    the other's write. Now a create checks its references after its write and a delete its referrers again after
    its tombstone, so one of the two always sees the other."""
    for _ in range(20):
        pid = requests.post(f"{server.base}/Patient", data=json.dumps({"resourceType": "Patient"}),
                            headers=FJ).json()["id"]
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "血糖"},
               "subject": {"reference": f"Patient/{pid}"}}

        def act(i: int, pid: str = pid, obs: dict = obs) -> int:
            if i == 0:
                return requests.delete(f"{server.base}/Patient/{pid}", timeout=60).status_code
            return requests.post(f"{server.base}/Observation", data=json.dumps(obs), headers=FJ,
                                 timeout=60).status_code

        codes = _burst(act, 4)
        assert codes[0] in (200, 409) and set(codes[1:]) <= {201, 422}, codes
        gone = requests.get(f"{server.base}/Patient/{pid}").status_code == 410
        left = requests.get(f"{server.base}/Observation", params={"subject": f"Patient/{pid}"}).json()["total"]
        assert not (gone and left), (codes, left)
        assert gone == (codes[0] == 200) and left == codes[1:].count(201), (codes, gone, left)


def test_a_record_and_an_update_pointing_to_it_at_once_leave_nothing_dangling(server):
    """The same for updates: an Observation moved to a Patient while that Patient is deleted."""
    home = requests.post(f"{server.base}/Patient", data=json.dumps({"resourceType": "Patient"}),
                         headers=FJ).json()["id"]
    for _ in range(20):
        pid = requests.post(f"{server.base}/Patient", data=json.dumps({"resourceType": "Patient"}),
                            headers=FJ).json()["id"]
        obs = requests.post(f"{server.base}/Observation", headers=FJ, data=json.dumps({
            "resourceType": "Observation", "status": "final", "code": {"text": "血糖"},
            "subject": {"reference": f"Patient/{home}"}})).json()

        def act(i: int, pid: str = pid, obs: dict = obs) -> int:
            if i == 0:
                return requests.delete(f"{server.base}/Patient/{pid}", timeout=60).status_code
            moved = {**obs, "subject": {"reference": f"Patient/{pid}"}}
            return requests.put(f"{server.base}/Observation/{obs['id']}", data=json.dumps(moved), headers=FJ,
                                timeout=60).status_code

        codes = _burst(act, 2)
        gone = requests.get(f"{server.base}/Patient/{pid}").status_code == 410
        subject = requests.get(f"{server.base}/Observation/{obs['id']}").json()["subject"]["reference"]
        assert not (gone and subject == f"Patient/{pid}"), codes


def test_records_written_during_a_merge_follow_the_resident(server):
    """Observations created for a duplicate record while it is merged into the resident's: each either went in
    before the merge moved the records (and moved with them) or is refused naming the resident's record; none is
    left under the retired one."""
    from app.synthetic import check_char

    for k in range(10):
        first17 = f"42010219660609{2 * k + 1:03d}"
        target = requests.post(f"{server.base}/Patient", headers=FJ, data=json.dumps({
            "resourceType": "Patient", "name": [{"text": f"合并{k}"}], "gender": "male", "birthDate": "1966-06-09",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": first17 + check_char(first17)}]})).json()
        source = requests.post(f"{server.base}/Patient", headers=FJ, data=json.dumps({
            "resourceType": "Patient", "name": [{"text": f"合并{k}"}],
            "identifier": [{"system": "urn:ehc:mrn:race", "value": f"R{k}"}]})).json()
        merge = {"resourceType": "Parameters", "parameter": [
            {"name": "source-patient", "valueReference": {"reference": f"Patient/{source['id']}"}},
            {"name": "target-patient", "valueReference": {"reference": f"Patient/{target['id']}"}}]}

        def act(i: int, merge: dict = merge, source: dict = source) -> int:
            if i == 0:
                return requests.post(f"{server.base}/Patient/$merge", data=json.dumps(merge), headers=FJ,
                                     timeout=60).status_code
            return requests.post(f"{server.base}/Observation", headers=FJ, timeout=60, data=json.dumps({
                "resourceType": "Observation", "status": "final", "code": {"text": "血糖"},
                "subject": {"reference": f"Patient/{source['id']}"}})).status_code

        codes = _burst(act, 4)
        assert codes[0] == 200 and set(codes[1:]) <= {201, 422}, codes
        left = requests.get(f"{server.base}/Observation", params={"patient": source["id"]}).json()["total"]
        moved = requests.get(f"{server.base}/Observation", params={"patient": target["id"]}).json()["total"]
        assert left == 0 and moved == codes[1:].count(201), (codes, left, moved)


def _patch_address(base: str, pid: str, text: str) -> int:
    return requests.patch(f"{base}/Patient/{pid}", timeout=60,
                          data=json.dumps([{"op": "add", "path": "/address", "value": [{"text": text}]}]),
                          headers={"Content-Type": "application/json-patch+json"}).status_code


def test_a_registration_does_not_undo_a_change_made_meanwhile(server):
    """A POST the master index turns into an update of the registered resident wrote the version it had read plus
    its additions: a PATCH landing in between was lost. Both changes stay."""
    from app.synthetic import check_char

    first17 = "11010119660606031"
    number = first17 + check_char(first17)
    pid = requests.post(f"{server.base}/Patient", headers=FJ, data=json.dumps({
        "resourceType": "Patient", "name": [{"text": "并发"}], "gender": "male", "birthDate": "1966-06-06",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number}]})).json()["id"]
    for k in range(15):
        def act(i: int, k: int = k) -> int:
            if i == 0:
                return _patch_address(server.base, pid, f"round {k}")
            return requests.post(f"{server.base}/Patient", headers=FJ, timeout=60, data=json.dumps({
                "resourceType": "Patient", "name": [{"text": "并发"}], "gender": "male",
                "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number},
                               {"system": "urn:ehc:mrn:org-r", "value": f"R{k}"}]})).status_code

        codes = _burst(act, 2)
        assert codes == [200, 200], codes
        res = requests.get(f"{server.base}/Patient/{pid}").json()
        assert res["address"] == [{"text": f"round {k}"}], (k, res.get("address"))
        assert f"R{k}" in {i["value"] for i in res["identifier"]}, k


def test_a_merge_does_not_undo_a_change_of_the_target_made_meanwhile(server):
    target = requests.post(f"{server.base}/Patient", headers=FJ, data=json.dumps({
        "resourceType": "Patient", "name": [{"text": "靶"}], "gender": "female"})).json()["id"]
    for k in range(15):
        source = requests.post(f"{server.base}/Patient", headers=FJ, data=json.dumps({
            "resourceType": "Patient", "name": [{"text": "靶"}], "gender": "female",
            "identifier": [{"system": "urn:ehc:mrn:org-m", "value": f"M{k}"}]})).json()["id"]
        merge = {"resourceType": "Parameters", "parameter": [
            {"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}},
            {"name": "target-patient", "valueReference": {"reference": f"Patient/{target}"}}]}

        def act(i: int, k: int = k, merge: dict = merge) -> int:
            if i == 0:
                return _patch_address(server.base, target, f"round {k}")
            return requests.post(f"{server.base}/Patient/$merge", data=json.dumps(merge), headers=FJ,
                                 timeout=60).status_code

        codes = _burst(act, 2)
        assert codes == [200, 200], codes
        res = requests.get(f"{server.base}/Patient/{target}").json()
        assert res["address"] == [{"text": f"round {k}"}], (k, res.get("address"))
        assert f"M{k}" in {i["value"] for i in res["identifier"]}, k
