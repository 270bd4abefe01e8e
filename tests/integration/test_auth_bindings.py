"""一人绑定多人 (RelatedPerson + Consent, guardian consent for a minor, undo) and the `ehc clients add` /
`ehc users add` commands."""

from __future__ import annotations

import json
from datetime import date

from click.testing import CliRunner

from app.auth.accounts import create_account, find_account
from app.auth.bindings import bind, unbind
from app.auth.models import Token, digest
from app.auth.plugin import auth_state
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import patient


def test_binding_a_relative_records_related_person_and_consent(svc):
    st = auth_state(svc)
    me = patient(svc, "陈", "父", birth="1975-01-01")
    mother = patient(svc, "林", "母", birth="1950-06-01")
    son = patient(svc, "陈", "子", birth="2015-09-09")
    acct = create_account(st.store, st.keys, "13900139000", "pass-word-1")
    bind(svc, st.store, acct, me, "SELF")
    assert acct.fhir_user == f"Patient/{me}"
    b_mother = bind(svc, st.store, acct, mother, "CHILD", today=date(2026, 1, 1))
    b_son = bind(svc, st.store, acct, son, "FTH", today=date(2026, 1, 1))
    assert find_account(st.store, st.keys, "13900139000").patients == [me, mother, son]
    rp = svc.repo.read("RelatedPerson", b_mother.related_person).resource
    assert rp["patient"]["reference"] == f"Patient/{mother}" and rp["relationship"][0]["coding"][0]["code"] == "CHILD"
    c_mother = svc.repo.read("Consent", b_mother.consent).resource
    assert c_mother["status"] == "active" and c_mother["patient"]["reference"] == f"Patient/{mother}"
    assert c_mother["performer"] == [{"reference": f"Patient/{mother}"}]  # an adult consents herself
    assert c_mother["provision"]["actor"][0]["reference"]["reference"] == f"RelatedPerson/{b_mother.related_person}"
    c_son = svc.repo.read("Consent", b_son.consent).resource
    assert c_son["performer"] == [{"reference": f"RelatedPerson/{b_son.related_person}"}]  # guardian for a minor
    # undo
    unbind(svc, st.store, acct, mother)
    assert svc.repo.read("Consent", b_mother.consent).resource["status"] == "inactive"
    assert svc.repo.read("RelatedPerson", b_mother.related_person).resource["active"] is False
    assert find_account(st.store, st.keys, "13900139000").patients == [me, son]


def test_binding_refuses_unknown_patient_or_relationship(svc):
    st = auth_state(svc)
    acct = create_account(st.store, st.keys, "13900139001", "pass-word-1")
    import pytest

    with pytest.raises(ValueError, match="does not exist"):
        bind(svc, st.store, acct, "no-such-patient", "SELF")
    with pytest.raises(ValueError, match="relationship"):
        bind(svc, st.store, acct, patient(svc), "COUSIN-ISH")
    with pytest.raises(ValueError, match="exists already"):
        create_account(st.store, st.keys, "+86 139-0013-9001", "pass-word-2")


def test_cli_clients_and_users(svc, auth_settings, tmp_path, monkeypatch):
    from app.cli import main

    monkeypatch.setenv("EHC_MONGODB_URI", auth_settings.mongodb_uri)
    monkeypatch.setenv("EHC_DATA_DIR", str(auth_settings.data_dir))
    runner = CliRunner()
    r = runner.invoke(main, ["clients", "add", "--name", "HIS", "--scopes", "system/Patient.rs", "--province", "44"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["client_id"] and out["client_secret"] and out["province"] == "44"
    r = runner.invoke(main, ["clients", "add", "--name", "app", "--scopes", "patient/*.rs launch/patient",
                             "--province", "11", "--public", "--redirect-uri", "https://app.example.cn/cb"])
    assert r.exit_code == 0 and "client_secret" not in json.loads(r.output)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "RSA", "n": "abc", "e": "AQAB", "d": "secret"}]}))
    r = runner.invoke(main, ["clients", "add", "--name", "x", "--scopes", "system/*.rs", "--province", "11",
                             "--jwks", str(jwks)])
    assert r.exit_code == 2 and "private key" in r.output
    r = runner.invoke(main, ["clients", "add", "--name", "x", "--scopes", "system/Patient.xyz", "--province", "11"])
    assert r.exit_code == 2
    pid = patient(svc)
    r = runner.invoke(main, ["users", "add", "--phone", "13700137000", "--password", "long enough 1",
                             "--patient", pid])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["fhirUser"] == f"Patient/{pid}"
    assert find_account(auth_state(svc).store, auth_state(svc).keys, "13700137000").patients == [pid]


def test_a_binding_ends_when_the_consent_recording_it_ends(auth_app, svc):
    """The Consent is the binding's record: the relative (or the home province's hospital at her request) who
    makes it inactive through the API expects the proxy's access to end. It did not: the account kept the
    patient and its tokens kept working, while the record said the consent had ended."""
    from tests.integration.auth_helpers import FJ, bearer, stored_token

    st = auth_state(svc)
    son = patient(svc, "杨", "子", birth="1980-01-01")
    mother = patient(svc, "杨", "母", birth="1948-02-02")
    acct = create_account(st.store, st.keys, "13900139002", "pass-word-1")
    bind(svc, st.store, acct, son, "SELF")
    binding = bind(svc, st.store, acct, mother, "CHILD")
    proxy = stored_token(svc, "patient/*.rs", patient=mother)  # the son's token for his mother
    st.store.set(Token, digest(proxy), account=acct.phone_key)  # as the authorization server issues it
    web = auth_app.test_client()
    assert web.get(f"/fhir/Patient/{mother}", headers=bearer(proxy)).status_code == 200
    herself = stored_token(svc, "patient/Consent.cru", patient=mother)
    consent = web.get(f"/fhir/Consent/{binding.consent}", headers=bearer(herself)).json
    r = web.put(f"/fhir/Consent/{binding.consent}", data=json.dumps({**consent, "status": "inactive"}),
                content_type=FJ, headers=bearer(herself))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert find_account(st.store, st.keys, "13900139002").patients == [son]
    assert svc.repo.read("RelatedPerson", binding.related_person).resource["active"] is False
    assert web.get(f"/fhir/Patient/{mother}", headers=bearer(proxy)).status_code == 401
    assert web.get(f"/fhir/Patient/{son}", headers=bearer(stored_token(svc, "patient/*.rs", patient=son))
                   ).status_code == 200  # the son's own access is untouched
    # bound again, then the home province's hospital deletes the Consent at her request: the same end
    again = bind(svc, st.store, find_account(st.store, st.keys, "13900139002"), mother, "CHILD")
    assert mother in find_account(st.store, st.keys, "13900139002").patients
    hospital = stored_token(svc, "system/*.cruds", province="11")
    assert web.delete(f"/fhir/Consent/{again.consent}", headers=bearer(hospital)).status_code == 200
    assert find_account(st.store, st.keys, "13900139002").patients == [son]


def test_a_binding_and_the_end_of_another_at_once_keep_both(svc):
    """Binding one relative while another's binding ends, at once and with copies of the account read before:
    the account ends with the new relative and without the old one. Each wrote the whole account from its own
    copy, so the last writer won: the ended binding came back to the account (its next login could choose that
    patient again), or the new one was lost."""
    from concurrent.futures import ThreadPoolExecutor

    st = auth_state(svc)
    me = patient(svc, "孙", "本人", birth="1970-01-01")
    acct = create_account(st.store, st.keys, "13900139077", "pass-word-1")
    bind(svc, st.store, acct, me, "SELF")
    for round_ in range(4):
        leaving = patient(svc, "孙", f"旧{round_}", birth="1945-01-01")
        coming = patient(svc, "孙", f"新{round_}", birth="1946-01-01")
        bind(svc, st.store, acct, leaving, "CHILD")
        copies = [find_account(st.store, st.keys, "13900139077") for _ in range(2)]  # as two requests read it

        with ThreadPoolExecutor(2) as pool:
            ended = pool.submit(unbind, svc, st.store, copies[0], leaving)
            bound = pool.submit(bind, svc, st.store, copies[1], coming, "CHILD")
            ended.result(), bound.result()
        patients = find_account(st.store, st.keys, "13900139077").patients
        assert leaving not in patients and coming in patients and patients[0] == me, (round_, patients)


def test_binding_one_relative_twice_at_once_records_it_once(svc):
    """A child's binding sent twice (a double click on the portal's form) made two RelatedPersons and two active
    Consents, one of them recording no binding: revoking it ended nothing. A binding that exists, as asked, is
    now the answer to binding again."""
    from concurrent.futures import ThreadPoolExecutor

    st = auth_state(svc)
    parent = patient(svc, "李", "父", birth="1980-01-01")
    child = patient(svc, "李", "儿", birth="2020-05-05")
    acct = create_account(st.store, st.keys, "13900139078", "pass-word-1")
    bind(svc, st.store, acct, parent, "SELF")
    copies = [find_account(st.store, st.keys, "13900139078") for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        bindings = list(pool.map(lambda a: bind(svc, st.store, a, child, "FTH"), copies))
    assert len({b.consent for b in bindings}) == 1
    related = list(svc.repo.db["RelatedPerson"].find({"res.patient.reference": f"Patient/{child}"}))
    consents = list(svc.repo.db["Consent"].find({"res.patient.reference": f"Patient/{child}", "res.status": "active"}))
    assert len(related) == 1 and len(consents) == 1
    assert find_account(st.store, st.keys, "13900139078").patients == [parent, child]
