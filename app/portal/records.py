"""My records: every resource the server holds for the patient (Patient/{id}/$everything with the resident's
token, for all clinical types the CapabilityStatement lists), grouped for people: visits, lab results as
tables with a trend chart for repeated numeric results, documents whose attachment opens inline, and any
other record type in a plain list. Records withheld by the server are counted, never guessed.

Records kept at another province's node are added when this node is part of a federation (app.portal.remote:
the same API, a search by the resident's ID number that the server forwards under the home node's consent
rules); each is marked with its province, and what a province withheld or could not answer is explained."""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from flask import Response, abort, request
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from app.portal import remote
from app.portal.charts import Point, trend_svg
from app.portal.web import api, bp, fhir, fhir_ok, lang, login_required, page, sess, svc, t, token_for

NOT_RECORDS = {"Patient", "AuditEvent", "Consent", "RelatedPerson", "Binary", "Organization", "Practitioner"}
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"}
KNOWN_CODES = {"2345-7": ("葡萄糖", "Glucose"), "4548-4": ("糖化血红蛋白", "HbA1c"),
               "2093-3": ("总胆固醇", "Cholesterol"), "718-7": ("血红蛋白", "Haemoglobin"),
               "8480-6": ("收缩压", "Systolic blood pressure"), "8462-4": ("舒张压", "Diastolic blood pressure"),
               "29463-7": ("体重", "Body weight"), "8867-4": ("心率", "Heart rate")}
TYPE_NAMES = {"Observation": ("检验检查", "Tests and observations"), "DocumentReference": ("文档", "Documents"),
              "Encounter": ("就诊", "Visits"), "Condition": ("诊断", "Diagnoses"),
              "DiagnosticReport": ("检查报告", "Reports"), "MedicationRequest": ("处方", "Prescriptions"),
              "Procedure": ("手术操作", "Procedures"), "Immunization": ("疫苗接种", "Immunizations"),
              "AllergyIntolerance": ("过敏", "Allergies"), "AuditEvent": ("访问记录", "access records")}


def type_name(rtype: str) -> str:
    return t(*TYPE_NAMES[rtype]) if rtype in TYPE_NAMES else rtype


def record_types() -> list[str]:
    """The clinical resource types this server holds (its configured type table, as in the CapabilityStatement)."""
    return [rt for rt in svc().resource_types if rt not in NOT_RECORDS]


def _when(res: dict[str, Any]) -> str:
    for key in ("effectiveDateTime", "issued", "date", "recordedDate", "authoredOn", "occurrenceDateTime"):
        if res.get(key):
            return str(res[key])
    for key in ("effectivePeriod", "period"):
        if (res.get(key) or {}).get("start"):
            return str(res[key]["start"])
    return str((res.get("meta") or {}).get("lastUpdated") or "")


def _parse(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def concept_text(concept: dict[str, Any] | None) -> str:
    concept = concept or {}
    for coding in concept.get("coding") or []:
        if coding.get("code") in KNOWN_CODES:
            return t(*KNOWN_CODES[coding["code"]])
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    codes = [c.get("code") for c in concept.get("coding") or [] if c.get("code")]
    return str(codes[0]) if codes else "—"


def _code_key(res: dict[str, Any]) -> str:
    codings = (res.get("code") or {}).get("coding") or [{}]
    return f"{codings[0].get('system')}|{codings[0].get('code')}" if codings[0].get("code") else \
        str((res.get("code") or {}).get("text") or "?")


def _value(res: dict[str, Any]) -> tuple[str, float | None, str]:
    q = res.get("valueQuantity")
    if isinstance(q, dict) and isinstance(q.get("value"), int | float):
        return f"{q['value']:g}", float(q["value"]), str(q.get("unit") or q.get("code") or "")
    if res.get("valueString") is not None:
        return str(res["valueString"]), None, ""
    if res.get("valueCodeableConcept"):
        return concept_text(res["valueCodeableConcept"]), None, ""
    for key in ("valueBoolean", "valueInteger"):
        if key in res:
            return str(res[key]), None, ""
    return "—", None, ""


def _range(res: dict[str, Any]) -> tuple[float | None, float | None, str]:
    for rng in res.get("referenceRange") or []:
        lo, hi = (rng.get("low") or {}).get("value"), (rng.get("high") or {}).get("value")
        text = rng.get("text") or (f"{lo:g}–{hi:g}" if lo is not None and hi is not None else "")
        return lo, hi, str(text)
    return None, None, ""


def _is_lab(res: dict[str, Any]) -> bool:
    return any(c.get("code") == "laboratory" for cat in res.get("category") or [] for c in cat.get("coding") or [])


def observation_groups(observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per test (code): rows newest first, and a chart when two or more values are numbers."""
    by_code: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for res in observations:
        by_code[_code_key(res)].append(res)
    groups = []
    for items in by_code.values():
        items.sort(key=_when, reverse=True)
        rows, points = [], []
        lo, hi, unit = None, None, ""
        for res in items:
            shown, number, u = _value(res)
            r_lo, r_hi, r_text = _range(res)
            lo, hi, unit = lo if lo is not None else r_lo, hi if hi is not None else r_hi, unit or u
            when = _parse(_when(res))
            flag = number is not None and ((r_hi is not None and number > r_hi) or (r_lo is not None and number < r_lo))
            rows.append({"id": res.get("id"), "when": when.strftime("%Y-%m-%d") if when else "—", "value": shown,
                         "unit": u, "range": r_text, "flag": flag, "province": res.get("_province")})
            if number is not None and when is not None:
                points.append(Point(when, number))
        name = concept_text(items[0].get("code"))
        chart = None
        if len(points) >= 2:
            chart = Markup(trend_svg(points, t(f"{name}趋势图", f"{name} trend"), unit, lo, hi))  # noqa: S704
        groups.append({"name": name, "rows": rows, "chart": chart, "lab": _is_lab(items[0]),
                       "latest": rows[0]["when"]})
    groups.sort(key=lambda g: (not g["lab"], g["name"]))
    return groups


def _summary(res: dict[str, Any]) -> str:
    for key in ("description", "title"):
        if res.get(key):
            return str(res[key])
    for key in ("type", "code", "class"):
        value = res.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, dict) and (value.get("coding") or value.get("text")):
            return concept_text(value)
        if isinstance(value, dict) and value.get("code"):  # a Coding (Encounter.class)
            return str(value.get("display") or value["code"])
    return res.get("resourceType", "")


def province_label(code: str | None) -> str:
    from app.portal.consents import PROVINCES

    if not code:
        return ""
    if code == "00":
        return t("国家平台", "National platform")
    return f"{PROVINCES.get(code, code)}（{code}）" if lang() == "zh" else f"province {code}"


def remote_notes(found: remote.RemoteRecords) -> list[dict[str, Any]]:
    """What the resident is told about each other province: shown, withheld (and why), unreachable."""
    here = svc().settings.province
    notes = []
    for code, n in sorted(found.notes.items()):
        name = province_label(code)
        if n.shown:
            notes.append({"kind": "shown", "province": code, "text": t(
                f"以下标有“{name}”的 {n.shown} 条记录保存在{name}的平台，经国家平台按您在该省的授权调阅。",
                f"{n.shown} records marked “{name}” are kept at the platform of {name}; they were fetched "
                "through the national platform under your consent there.")})
        if n.withheld:
            notes.append({"kind": "withheld", "province": code, "text": t(
                f"{name}的平台保存着您的 {n.withheld} 条记录，未显示：记录跨省调阅须经您在{name}授权本省"
                f"（{province_label(here)}）查看。如需在此查看，请在{name}的居民门户或医院办理授权。",
                f"{n.withheld} of your records kept at the platform of {name} are not shown: records cross "
                f"provinces only with your consent given in {name} for this province ({province_label(here)}). "
                f"To see them here, grant it in the resident portal or at a hospital of {name}.")})
        if n.unreachable and code == "00":
            notes.append({"kind": "unreachable", "province": code, "text": t(
                "暂时无法连接国家平台，其他省份保存的记录未显示，请稍后再试。",
                "The national platform cannot be reached now; records kept in other provinces are not shown. "
                "Please try again later.")})
        elif n.unreachable:
            notes.append({"kind": "unreachable", "province": code, "text": t(
                f"暂时无法连接{name}的平台，那里的记录未显示，请稍后再试。",
                f"The platform of {name} cannot be reached now; records kept there are not shown. "
                "Please try again later.")})
        if n.refused:
            notes.append({"kind": "refused", "province": code, "text": t(
                f"{name}的平台拒绝了本次查询，那里的记录未显示。",
                f"The platform of {name} refused the query; records kept there are not shown.")})
    return notes


def _remote_records(pid: str) -> remote.RemoteRecords:
    if not remote.federated(svc()):
        return remote.RemoteRecords()
    number = remote.id_number(fhir_ok("GET", f"Patient/{pid}"))
    if number is None:
        return remote.RemoteRecords()  # the national index knows residents by ID number only
    return remote.fetch(api(), token_for(pid), number)


@bp.route("/records", methods=["GET"])
@login_required
def records() -> ResponseReturnValue:
    pid = sess().get("acting")
    bundle = fhir_ok("GET", f"Patient/{pid}/$everything", params={"_type": ",".join(record_types())})
    elsewhere = _remote_records(str(pid))
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    withheld = 0
    for entry in bundle.get("entry", []):
        res = entry.get("resource") or {}
        if (entry.get("search") or {}).get("mode") == "outcome":
            withheld += sum(1 for i in res.get("issue", []) if i.get("code") == "suppressed")
            continue
        if res.get("resourceType") not in NOT_RECORDS:
            by_type[res["resourceType"]].append(res)
    for res in elsewhere.resources:
        by_type[res["resourceType"]].append(res)
    groups = observation_groups(by_type.pop("Observation", []))
    documents = [{"id": d.get("id"), "title": _summary(d), "when": _when(d)[:10], "province": d.get("_province"),
                  "types": ", ".join(sorted({(c.get("attachment") or {}).get("contentType") or "?"
                                             for c in d.get("content") or []}))}
                 for d in sorted(by_type.pop("DocumentReference", []), key=_when, reverse=True)]
    visits = [{"when": _when(e)[:10], "title": _summary(e), "id": e.get("id"), "province": e.get("_province")}
              for e in sorted(by_type.pop("Encounter", []), key=_when, reverse=True)]
    others = [{"type": type_name(rt), "items": [{"when": _when(r)[:10], "title": _summary(r),
                                                 "province": r.get("_province")}
                                                for r in sorted(items, key=_when, reverse=True)]}
              for rt, items in sorted(by_type.items())]
    return page("portal/records.html", labs=[g for g in groups if g["lab"]],
                observations=[g for g in groups if not g["lab"]], documents=documents, visits=visits,
                others=others, withheld=withheld, remote_notes=remote_notes(elsewhere),
                province_label=province_label)


def _document(doc_id: str) -> dict[str, Any]:
    province = request.args.get("province")
    if province:  # a document kept at another province's node: the same federated search, narrowed by _id
        pid = str(sess().get("acting"))
        number = remote.id_number(fhir_ok("GET", f"Patient/{pid}")) if remote.federated(svc()) else None
        found, home = remote.document(api(), token_for(pid), number, doc_id) if number else (None, None)
        if found is None or home != province:
            abort(404)
        return {**found, "_province": home}
    ans = fhir("GET", f"DocumentReference/{doc_id}")
    if ans.status in (403, 404, 410):
        abort(404)
    if not ans.ok:
        abort(502)
    body: dict[str, Any] = ans.body
    return body


@bp.route("/records/document/<doc_id>", methods=["GET"])
@login_required
def record_document(doc_id: str) -> ResponseReturnValue:
    doc = _document(doc_id)
    attachments = []
    for n, content in enumerate(doc.get("content") or []):
        att = content.get("attachment") or {}
        ctype = str(att.get("contentType") or "")
        attachments.append({"n": n, "type": ctype, "title": att.get("title") or _summary(doc),
                            "kind": "image" if ctype.startswith("image/") and ctype in INLINE_TYPES else
                            "pdf" if ctype == "application/pdf" else "other"})
    return page("portal/document.html", doc=doc, title=_summary(doc), when=_when(doc)[:10], attachments=attachments,
                province=doc.get("_province"), province_label=province_label)


@bp.route("/records/document/<doc_id>/<int:n>", methods=["GET"])
@login_required
def record_attachment(doc_id: str, n: int) -> ResponseReturnValue:
    doc = _document(doc_id)
    contents = doc.get("content") or []
    if not 0 <= n < len(contents):
        abort(404)
    att = contents[n].get("attachment") or {}
    data: bytes | None = None
    try:
        if att.get("data"):
            data = base64.b64decode(att["data"])
        elif att.get("url") and not doc.get("_province"):  # a Binary at another node is not reachable here
            ref = str(att["url"]).split("/fhir/")[-1]
            if not ref.startswith("Binary/") or ref.count("/") != 1:
                abort(404)
            binary = fhir("GET", ref)
            if not binary.ok or not isinstance(binary.body, dict):
                abort(404)
            data = base64.b64decode(binary.body.get("data") or "")
    except binascii.Error:
        abort(404)
    if data is None:
        abort(404)
    ctype = str(att.get("contentType") or "application/octet-stream").split(";")[0]
    resp = Response(data, mimetype=ctype if ctype in INLINE_TYPES else "application/octet-stream")
    disposition = "inline" if ctype in INLINE_TYPES else "attachment"
    resp.headers["Content-Disposition"] = f'{disposition}; filename="document-{doc_id}-{n}"'
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    resp.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
    return resp
