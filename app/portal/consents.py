"""Consents: the resident's Consent resources (Consent?patient=), granting access to another province or a
hospital (data classes, period), and revoking one. Every change is a FHIR Consent version written through the
API with the resident's token: a grant is a create (version 1), a revocation an update to status inactive
(If-Match on the version shown). The shape is the one the access gate looks for: provision permit, action
access, actor an Organization or a province identifier (urn:ehc:province|NN), optional classes and period; the
policyRule OPTIN (app.auth.consent.policy_rule: core invariant ppc-1)."""

from __future__ import annotations

import re
import secrets
from datetime import date, timedelta
from typing import Any

from flask import request
from flask.typing import ResponseReturnValue

from app.auth.consent import add_policy_rule, policy_rule
from app.auth.models import Binding
from app.auth.plugin import auth_state
from app.core.access import PROVINCE_SYSTEM
from app.core.timeutil import today_in_china
from app.portal.fhirclient import ApiError
from app.portal.records import type_name
from app.portal.web import bp, fhir, fhir_ok, login_required, page, said, sess, svc, t, take_said

GRANT_SYSTEM = "urn:ehc:portal-grant"  # the one-time id of a grant form: a grant sent twice is one Consent
CLASS_SYSTEM = "http://hl7.org/fhir/resource-types"
PROVINCES = {"11": "北京", "12": "天津", "13": "河北", "14": "山西", "15": "内蒙古", "21": "辽宁", "22": "吉林",
             "23": "黑龙江", "31": "上海", "32": "江苏", "33": "浙江", "34": "安徽", "35": "福建", "36": "江西",
             "37": "山东", "41": "河南", "42": "湖北", "43": "湖南", "44": "广东", "45": "广西", "46": "海南",
             "50": "重庆", "51": "四川", "52": "贵州", "53": "云南", "54": "西藏", "61": "陕西", "62": "甘肃",
             "63": "青海", "64": "宁夏", "65": "新疆", "71": "台湾", "81": "香港", "82": "澳门"}


def province_name(code: str) -> str:
    return PROVINCES.get(code, code) + t("（全省医疗机构）", f" (all providers, province {code})")


# What a resident chooses to share, in words, and the resource types each choice covers (provision.class).
DATA_CLASSES = [
    ("Patient", ("基本信息", "Basic details"), ("Patient",)),
    ("Observation", ("检验检查", "Tests and observations"), ("Observation", "DiagnosticReport", "Specimen")),
    ("Encounter", ("就诊", "Visits"), ("Encounter", "EpisodeOfCare", "Appointment")),
    ("Condition", ("诊断", "Diagnoses"), ("Condition", "Procedure", "AllergyIntolerance")),
    ("MedicationRequest", ("用药", "Medicines"), ("MedicationRequest", "MedicationStatement",
                                                 "MedicationDispense", "Immunization")),
    ("DocumentReference", ("文档", "Documents"), ("DocumentReference", "Binary", "Composition")),
]


def data_classes() -> list[tuple[str, str]]:
    """(choice, words) for the kinds of record this server holds."""
    held = set(svc().resource_types)
    return [(key, t(*words)) for key, words, types in DATA_CLASSES if held & set(types)]


def class_codes(choice: str) -> list[str]:
    held = set(svc().resource_types)
    return [rt for key, _, types in DATA_CLASSES if key == choice for rt in types if rt in held]


def class_words(codes: list[str]) -> str:
    """The choices a list of provision.class codes covers, in words (a code outside them by its type name)."""
    out = []
    for code in codes:
        words = next((t(*w) for _, w, types in DATA_CLASSES if code in types), type_name(code))
        if words not in out:
            out.append(words)
    return "、".join(out)


class Names:
    """Organization names through the API (directory data), cached for one page."""

    def __init__(self, pid: str | None = None) -> None:
        self.pid = pid
        self.cache: dict[str, str] = {}

    def org(self, org_id: str) -> str:
        if org_id not in self.cache:
            ans = fhir("GET", f"Organization/{org_id}", self.pid) if re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", org_id) \
                else None
            self.cache[org_id] = str(ans.body.get("name")) if ans is not None and ans.ok and \
                isinstance(ans.body, dict) and ans.body.get("name") else org_id
        return self.cache[org_id]


def describe_actor(actor: dict[str, Any], names: Names) -> tuple[str, str]:
    """(kind, words) for a provision actor: province, organization, family (a bound relative), other."""
    ref = actor.get("reference") or {}
    ident = ref.get("identifier") or {}
    target = str(ref.get("reference") or "")
    if ident.get("system") == PROVINCE_SYSTEM:
        return "province", province_name(str(ident.get("value")))
    if target.startswith("Organization/"):
        return "organization", names.org(target.split("/", 1)[1])
    if target.startswith("RelatedPerson/"):
        return "family", t("绑定的家人（代办）", "A bound relative (acting for you)")
    return "other", str(ref.get("display") or target or "—")


def summarize(consent: dict[str, Any], names: Names) -> dict[str, Any]:
    prov = consent.get("provision") or {}
    actors = [describe_actor(a, names) for a in prov.get("actor") or []]
    classes = class_words([str(c.get("code", "")) for c in prov.get("class") or []])
    period = prov.get("period") or {}
    kind = actors[0][0] if actors else "other"
    return {"id": consent.get("id"), "version": (consent.get("meta") or {}).get("versionId"),
            "status": consent.get("status"), "kind": kind, "who": "、".join(a[1] for a in actors) or "—",
            "classes": classes or t("全部记录", "All records"),
            "start": (period.get("start") or "")[:10], "end": (period.get("end") or "")[:10],
            "permit": prov.get("type") == "permit",
            # a family consent too: revoking it ends the relative's binding (app.auth.bindings.end_binding)
            "editable": consent.get("status") == "active" and kind in ("province", "organization", "family")}


@bp.route("/consents", methods=["GET"])
@login_required
def consents(errors: dict[str, str] | None = None, code: int = 200) -> ResponseReturnValue:
    pid = sess().get("acting")
    bundle = fhir_ok("GET", "Consent", params={"patient": pid, "_count": 100})
    names = Names()
    items = [summarize(e["resource"], names) for e in bundle.get("entry", [])
             if (e.get("search") or {}).get("mode", "match") == "match"]
    items.sort(key=lambda c: (c["status"] != "active", c["kind"] == "family", str(c["start"])), reverse=False)
    orgs = fhir_ok("GET", "Organization", params={"_count": 100})
    hospitals = [(e["resource"]["id"], e["resource"].get("name") or e["resource"]["id"]) for e in orgs.get("entry", [])
                 if (e.get("resource") or {}).get("resourceType") == "Organization"]
    today = today_in_china()
    return page("portal/consents.html", code, items=items, provinces=sorted(PROVINCES.items()),
                hospitals=hospitals, classes=data_classes(), errors=errors or {}, form=request.form,
                today=today.isoformat(), year=(today + timedelta(days=365)).isoformat(),
                grant=secrets.token_urlsafe(12),
                message=take_said())


def _performer() -> dict[str, str]:
    """Who gives the consent: the patient, or — acting for a relative — the proxy's RelatedPerson."""
    pid, me = sess().get("acting"), sess().get("self")
    if pid != me:
        binding = auth_state(svc()).store.get(Binding, f"{sess().get('account')}|{pid}")
        if binding is not None and binding.related_person:
            return {"reference": f"RelatedPerson/{binding.related_person}"}
    return {"reference": f"Patient/{pid}"}


@bp.route("/consents", methods=["POST"])
@login_required
def consent_grant() -> ResponseReturnValue:
    form = request.form
    errors: dict[str, str] = {}
    target = form.get("target")
    actor: dict[str, Any] = {}
    if target == "province" and form.get("province") in PROVINCES:
        actor = {"identifier": {"system": PROVINCE_SYSTEM, "value": form["province"]},
                 "display": PROVINCES[form["province"]]}
    elif target == "organization" and re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", form.get("organization") or ""):
        actor = {"reference": f"Organization/{form['organization']}"}
    else:
        errors["target"] = t("请选择省份或医院", "Choose a province or a hospital")
    allowed = {c for c, _ in data_classes()}
    chosen = [c for c in form.getlist("class") if c in allowed]
    if not chosen:
        errors["class"] = t("请至少选择一类记录", "Choose at least one kind of record")
    start, end = form.get("start") or "", form.get("end") or ""
    try:
        d0, d1 = date.fromisoformat(start), date.fromisoformat(end)
        if d1 < d0:
            errors["end"] = t("结束日期不能早于开始日期", "The end date cannot be before the start date")
    except ValueError:
        errors["end"] = t("请填写开始和结束日期", "Enter the start and end dates")
    if errors:
        return consents(errors, 400)
    pid = sess().get("acting")
    consent = {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"}, "dateTime": today_in_china().isoformat(),
        "performer": [_performer()],
        "policyRule": policy_rule(),
        "provision": {
            "type": "permit", "period": {"start": start, "end": end},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "IRCP"}]}, "reference": actor}],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                    "code": "access"}]}],
            "class": [{"system": CLASS_SYSTEM, "code": code} for c in chosen for code in class_codes(c)],
        },
    }
    # The form's one-time grant id makes the grant a conditional create: sent twice (a double click, a reload),
    # it is one Consent, which one revocation ends.
    grant = form.get("grant") or ""
    headers = {}
    if re.fullmatch(r"[A-Za-z0-9_-]{16}", grant):
        consent["identifier"] = [{"system": GRANT_SYSTEM, "value": grant}]
        headers["If-None-Exist"] = f"identifier={GRANT_SYSTEM}|{grant}"
    try:
        stored = fhir_ok("POST", "Consent", body=consent, headers=headers)
    except ApiError as err:
        return consents({"target": err.answer.diagnostics()}, 400)
    if isinstance(stored, dict) and stored.get("status") != "active":
        # the form was sent before, and the Consent it made has been revoked since: nothing is granted now
        return said("portal.consents", t("这张授权表单已用过，其授权已撤销；如需授权请重新填写",
                                         "This form was used before and its consent has been revoked since; "
                                         "fill in a new one to grant again"))
    return said("portal.consents", t("已授权", "Consent granted"))


@bp.route("/consents/<cid>/revoke", methods=["POST"])
@login_required
def consent_revoke(cid: str) -> ResponseReturnValue:
    ans = fhir("GET", f"Consent/{cid}")
    if not ans.ok or not isinstance(ans.body, dict):
        return said("portal.consents", t("授权不存在", "No such consent"))
    consent = ans.body
    version = (consent.get("meta") or {}).get("versionId")
    if request.form.get("version") and request.form["version"] != version:
        return said("portal.consents", t("授权已被修改，请重试", "The consent changed; try again"))
    consent["status"] = "inactive"
    add_policy_rule(consent)  # one granted before ppc-1 was checked names no policyRule: its revocation does
    done = fhir("PUT", f"Consent/{cid}", body=consent, headers={"If-Match": f'W/"{version}"'})
    if not done.ok:
        return said("portal.consents", done.diagnostics())
    return said("portal.consents", t("已撤销授权", "Consent revoked"))
