"""一人绑定多人: a resident account bound to several patients (self, parents, children ...).

Binding a relative is recorded in FHIR, so it is visible and auditable like any other access right:
a RelatedPerson (the account holder, in relation to the bound patient) and a Consent by which the bound
patient — or, for a minor (under 18), the account holder as guardian — permits that RelatedPerson to
access the patient's records. Unbinding undoes it: the Consent becomes inactive, the RelatedPerson
inactive, and the account loses the patient.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from app.auth.consent import add_policy_rule, policy_rule
from app.auth.models import AuthStore, Binding, ResidentAccount, Token
from app.core.timeutil import today_in_china
from app.mpi.identifiers import age_of
from app.mpi.plugin import identifier_registry
from app.store.repository import WriteContext

ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
RELATIONSHIPS = {"SELF": "本人", "MTH": "母亲", "FTH": "父亲", "PRN": "父母", "CHILD": "子女", "SON": "儿子",
                 "DAU": "女儿", "SPS": "配偶", "HUSB": "丈夫", "WIFE": "妻子", "GRMTH": "祖母/外祖母",
                 "GRFTH": "祖父/外祖父", "SIB": "兄弟姐妹", "GUARD": "监护人", "FAMMEMB": "家庭成员"}
ADULT_AGE = 18


def _context(svc: Any, account: ResidentAccount | None) -> WriteContext:
    return WriteContext(province=svc.settings.province, client_id="ehc-accounts",
                        user=account.fhir_user if account else None)


def bind(svc: Any, store: AuthStore, account: ResidentAccount, patient_id: str, relationship: str = "SELF",
         today: date | None = None) -> Binding:
    """Bind `patient_id` to the account. `relationship` is what the account holder is to that patient
    (v3 RoleCode: MTH = the holder is the patient's mother ...)."""
    relationship = relationship.upper()
    if relationship not in RELATIONSHIPS:
        raise ValueError(f"unknown relationship {relationship!r}; one of {', '.join(sorted(RELATIONSHIPS))}")
    doc = svc.repo.get_doc("Patient", patient_id)
    if doc is None or doc.get("del"):
        raise ValueError(f"Patient/{patient_id} does not exist")
    key = f"{account.phone_key}|{patient_id}"
    with svc.leases.hold("binding|" + key):
        binding = store.get(Binding, key)
        if binding is None or not binding.active or binding.relationship != relationship:
            binding = _record(svc, store, account, patient_id, relationship, doc, today)
        # else bound already, as asked (a form sent twice): no second RelatedPerson or Consent

    def add(stored: ResidentAccount) -> None:
        if relationship == "SELF" and not stored.fhir_user:
            stored.fhir_user = f"Patient/{patient_id}"
        if patient_id not in stored.patients:
            stored.patients = [*stored.patients, patient_id] if relationship != "SELF" else \
                [patient_id, *stored.patients]

    change_account(svc, store, account, add)
    return binding


def _record(svc: Any, store: AuthStore, account: ResidentAccount, patient_id: str, relationship: str,
            doc: dict[str, Any], today: date | None) -> Binding:
    """The Binding of a new binding, with the RelatedPerson and the Consent that record a relative's."""
    key = f"{account.phone_key}|{patient_id}"
    binding = Binding(key=key, account=account.phone_key, patient=patient_id, relationship=relationship)
    ctx = _context(svc, account)
    if relationship != "SELF":
        rp = svc.repo.create("RelatedPerson", {
            "resourceType": "RelatedPerson", "active": True,
            "patient": {"reference": f"Patient/{patient_id}"},
            "relationship": [{"coding": [{"system": ROLE_SYSTEM, "code": relationship,
                                          "display": RELATIONSHIPS[relationship]}]}],
            "name": [{"text": f"{RELATIONSHIPS[relationship]}（账户 {account.phone_hint}）"}],
        }, ctx)
        age = age_of(doc.get("res") or {}, identifier_registry(svc), today or today_in_china())
        by = f"RelatedPerson/{rp.id}" if age is not None and age < ADULT_AGE else f"Patient/{patient_id}"
        consent = svc.repo.create("Consent", {
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient_id}"},
            "dateTime": (today or today_in_china()).isoformat(),
            "performer": [{"reference": by}],
            "policyRule": policy_rule(),
            "provision": {
                "type": "permit",
                "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                                                "code": "AGNT"}]},
                           "reference": {"reference": f"RelatedPerson/{rp.id}"}}],
                "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                        "code": "access"}]}],
            },
        }, ctx)
        binding.related_person = rp.id
        binding.consent = consent.id
        binding.consent_by = by
    store.save(binding)
    return binding


def change_account(svc: Any, store: AuthStore, account: ResidentAccount,
                   change: Callable[[ResidentAccount], None]) -> None:
    """Change an account's bound patients on the account as stored, under its lease, and bring the caller's
    copy up to date. Each change writes the whole account: made on copies read before, a binding and the end
    of another at once wrote one over the other, and an ended binding came back to the account (its next login
    could choose that patient again)."""
    with svc.leases.hold("account|" + account.phone_key):
        stored = store.get(ResidentAccount, account.phone_key) or account
        change(stored)
        store.save(stored)
    account.patients, account.fhir_user = stored.patients, stored.fhir_user


def acts_for(store: AuthStore, account_key: str, patient_id: str) -> bool:
    """Whether an account acts for a patient now: one of its patients, and, for a relative, by a binding that has
    not ended (the binding ends first when it is undone, before the account's list and its tokens)."""
    account = store.get(ResidentAccount, account_key)
    if account is None or patient_id not in account.patients:
        return False
    binding = store.get(Binding, f"{account_key}|{patient_id}")
    return binding is None or binding.active


def unbind(svc: Any, store: AuthStore, account: ResidentAccount, patient_id: str) -> Binding | None:
    """Undo a binding: its Consent made inactive, which ends it (`end_binding`): the RelatedPerson inactive, the
    patient off the account, the account's tokens for that patient revoked."""
    binding = store.get(Binding, f"{account.phone_key}|{patient_id}")
    if binding is not None and binding.active and binding.consent:
        _set(svc, "Consent", binding.consent, _context(svc, account), status="inactive")
    return end_binding(svc, store, f"{account.phone_key}|{patient_id}", account)


def end_bindings_recorded_by(svc: Any, store: AuthStore, consent_id: str) -> None:
    """End the bindings a Consent records, now that it has ended (made inactive, rejected, deleted): whoever ended
    it (the relative, the home province's hospital at her request, the account holder unbinding), the access
    it recorded ends with it, and the record says what the access is."""
    for raw in store.collection(Binding).find({"consent": consent_id}, {"_id": 1}):
        end_binding(svc, store, str(raw["_id"]))


def end_binding(svc: Any, store: AuthStore, key: str, account: ResidentAccount | None = None) -> Binding | None:
    """The end of one binding (`<account>|<patient>`), idempotent. `account`: the caller's copy, kept up to date."""
    binding = store.get(Binding, key)
    phone_key, _, patient_id = key.partition("|")
    account = account or store.get(ResidentAccount, phone_key)
    if binding is not None and binding.active:
        if binding.related_person:
            _set(svc, "RelatedPerson", binding.related_person, _context(svc, account), active=False)
        binding.active = False
        store.save(binding)
        tokens = {"account": phone_key, "patient": patient_id, "revoked": {"$ne": True}}
        live = [t["_id"] for t in store.collection(Token).find(tokens, {"_id": 1})]
        store.collection(Token).update_many(tokens, {"$set": {"revoked": True}})  # one command, not one a token
        store.forget(*live)

    def remove(stored: ResidentAccount) -> None:
        stored.patients = [p for p in stored.patients if p != patient_id]
        if stored.fhir_user == f"Patient/{patient_id}":
            stored.fhir_user = None

    if account is not None:
        change_account(svc, store, account, remove)
    return binding


def _set(svc: Any, rtype: str, rid: str, ctx: WriteContext, **changes: Any) -> None:
    stored = svc.repo.read(rtype, rid, fire=False)
    if stored.resource is None:
        return
    changed = {**stored.resource, **changes}
    if rtype == "Consent":  # a binding's Consent written before ppc-1 was checked: its next version meets it
        add_policy_rule(changed)
    svc.repo.update(rtype, rid, changed, if_match=stored.vid, context=ctx)
