"""Who read my records: the patient's AuditEvents (AuditEvent?patient=<id>, through the API with the
resident's token) in plain words — "上海某医院 查看了您的 检验结果, 2026-11-29 10:31" — with refused attempts
and break-the-glass accesses highlighted, filtered by date and by organization. By default the resident's own
use of the portal is left out (a checkbox shows it); a relative acting as proxy is always shown.

In a federation the accesses recorded at other provinces' nodes are added, fetched like the records
(app.portal.remote: AuditEvent?patient.identifier=<ID number>, forwarded under the home node's consent rules)
and marked with their province; the resident's portal reaching them from this node is named as such."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from flask import request
from flask.typing import ResponseReturnValue

from app.auth.plugin import auth_state
from app.core.timeutil import CHINA_TIME
from app.portal import remote
from app.portal.consents import Names
from app.portal.records import province_label, remote_notes, type_name
from app.portal.registration import CLIENT_ID
from app.portal.web import api, bp, fhir_ok, login_required, page, sess, svc, t, token_for

CLIENT_SYSTEM = "urn:ehc:client"
VIA_NODE = re.compile(r"\bnode-(\d\d)(?: for node-(\d\d))?")  # a request another node made for its client
ORG_SYSTEM = "urn:ehc:organization"
OPERATIONS = {"$ehc-qrcode": ("生成了您的健康卡二维码", "made a QR code of your health card"),
              "$ehc-verify": ("核验了您的健康卡", "verified your health card"),
              "$ehc-status": ("更改了您的健康卡状态", "changed the status of your health card"),
              "$everything": ("调阅了您的全部记录", "opened all your records")}
VERBS = {"read": ("查看了", "viewed"), "vread": ("查看了", "viewed"), "search-type": ("查询了", "searched"),
         "search-system": ("查询了", "searched"), "create": ("新建了", "created"), "update": ("修改了", "changed"),
         "patch": ("修改了", "changed"), "delete": ("删除了", "deleted"), "history-instance": ("查看了", "viewed"),
         "history-type": ("查看了", "viewed"), "history": ("查看了", "viewed")}


def _what(event: dict[str, Any]) -> str:
    types = []
    for entity in event.get("entity") or []:
        what = entity.get("what") or {}
        segs = str(what.get("reference") or "").split("/")
        # relative or absolute; a record the access shared with other residents shows only its type
        rtype = segs[-2] if len(segs) >= 2 and segs[-2][:1].isupper() else str(what.get("type") or "")
        if rtype and rtype not in ("Patient", "Consent") and rtype not in types:
            types.append(rtype)
    if not types:  # a search: the type its query names
        for entity in event.get("entity") or []:
            if (entity.get("role") or {}).get("code") == "24":
                rtype = str(entity.get("description") or "").split("?")[0].split("/")[0]
                if rtype and rtype[:1].isupper():
                    types.append(rtype)
    if not types:
        return t("记录", "records") if event.get("action") == "E" else t("基本信息", "basic details")
    return "、".join(type_name(rt) if rt != "Patient" else t("基本信息", "basic details") for rt in types)


class Describer:
    def __init__(self, pid: str) -> None:
        self.pid = pid
        self.names = Names()
        self.clients: dict[str, str] = {}
        self.labels = sess().get("labels") or {}

    def client_name(self, client_id: str) -> str:
        if client_id not in self.clients:
            client = auth_state(svc()).server.lookup_client(client_id)
            self.clients[client_id] = client.doc.name if client is not None else client_id
        return self.clients[client_id]

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        client = org = user = org_display = client_display = None
        for agent in event.get("agent") or []:
            ident = (agent.get("who") or {}).get("identifier") or {}
            if ident.get("system") == CLIENT_SYSTEM:
                client, client_display = str(ident.get("value")), agent.get("name")
            elif ident.get("system") == ORG_SYSTEM:
                org, org_display = str(ident.get("value")), (agent.get("who") or {}).get("display")
            elif any(c.get("code") == "humanuser" for c in (agent.get("type") or {}).get("coding") or []):
                user = str((agent.get("who") or {}).get("reference") or "")
        province = event.get("_province")  # recorded at another province's node
        via = next((m for a in event.get("agent") or [] for p in a.get("policy") or []
                    if (m := VIA_NODE.search(str(p)))), None)
        own = client == CLIENT_ID and user == f"Patient/{self.pid}"
        if client == CLIENT_ID and via:  # a resident portal at another node: the resident or a relative (shown)
            own = False
            who = t("居民门户（经", "The resident portal (through ") + province_label(via.group(2) or via.group(1)) + \
                t("平台，您本人或家人）", ": you or a relative)")
        elif province and org:  # a name this node's directory may not know
            who = str(org_display or org)
        elif province and client:
            who = str(client_display or client)
        elif client == CLIENT_ID:
            who = t("您本人（居民门户）", "You (resident portal)") if own else \
                t("您的家人代办", "A relative acting for you") + \
                (f"（{self.labels[user.split('/', 1)[1]]}）" if user and user.split("/", 1)[-1] in self.labels else "")
        elif org:
            who = self.names.org(org)
        elif client:
            who = self.client_name(client)
        else:
            who = t("未识别的访问者", "An unidentified caller")
        subtype = ((event.get("subtype") or [{}])[0]).get("code") or ""
        desc = str(event.get("outcomeDesc") or "")
        op = next((k for k in OPERATIONS if k in desc), None)
        refused = event.get("outcome") not in (None, "0")
        glass = any(c.get("code") == "ETREAT" for p in event.get("purposeOfEvent") or [] for c in p.get("coding") or [])
        if "login" in desc:  # the authorization server's login record for this resident's account
            own = not refused
            who = t("您的账户", "Your account")
            action = t("登录失败（密码或验证码错误，或已锁定）",
                       "failed to sign in (wrong password or code, or locked)") if refused else t("已登录", "signed in")
        elif op and not refused:
            action = t(*OPERATIONS[op])
        else:
            verb = VERBS.get(subtype, ("访问了", "accessed"))
            action = (t("试图查看", "tried to view") if refused else t(*verb)) + t("您的 ", " your ") + _what(event)
        withheld = sum(int(d.get("valueString") or 0) for e in event.get("entity") or []
                       for d in e.get("detail") or [] if d.get("type") == "withheld"
                       and str(d.get("valueString") or "").isdigit())
        if withheld:
            action += t(f"（{withheld} 条未经您授权，未提供）", f" ({withheld} withheld: no consent from you)")
        recorded = datetime.fromisoformat(str(event.get("recorded")).replace("Z", "+00:00")).astimezone(CHINA_TIME)
        consent = any((e.get("role") or {}).get("code") == "13" for e in event.get("entity") or [])
        return {"who": who, "action": action, "when": recorded.strftime("%Y-%m-%d %H:%M"), "refused": refused,
                "glass": glass, "own": own, "org": org, "consent": consent, "id": event.get("id"),
                "site": (event.get("source") or {}).get("site"), "province": province}


@bp.route("/accesses", methods=["GET"])
@login_required
def accesses() -> ResponseReturnValue:
    pid = str(sess().get("acting"))
    args = request.args
    params: list[tuple[str, str]] = [("patient", pid), ("_count", "200"), ("_sort", "-date")]
    errors = {}
    for name, prefix in (("from", "ge"), ("to", "le")):
        if args.get(name):
            try:
                day = date.fromisoformat(args[name])
            except ValueError:
                errors[name] = t("日期格式应为 年-月-日", "Use the date format YYYY-MM-DD")
                continue
            edge = f"{day}T00:00:00+08:00" if prefix == "ge" else f"{day}T23:59:59+08:00"
            params.append(("date", f"{prefix}{edge}"))
    bundle = fhir_ok("GET", "AuditEvent", params=params)
    describe = Describer(pid)
    events = [describe(e["resource"]) for e in bundle.get("entry", [])
              if (e.get("resource") or {}).get("resourceType") == "AuditEvent"]
    elsewhere = _remote_events(pid, [p for p in params if p[0] in ("date", "_sort")])
    if elsewhere.resources:
        events += [describe(e) for e in elsewhere.resources if e.get("resourceType") == "AuditEvent"]
        events.sort(key=lambda e: e["when"], reverse=True)
    orgs = sorted({(e["org"], e["who"]) for e in events if e["org"]}, key=lambda o: o[1])
    show_own = args.get("mine") == "1"
    org = args.get("org") or ""
    shown = [e for e in events if (show_own or not e["own"]) and (not org or e["org"] == org)]
    return page("portal/accesses.html", events=shown, orgs=orgs, org=org, show_own=show_own, errors=errors,
                remote_notes=remote_notes(elsewhere), province_label=province_label,
                start=args.get("from", ""), end=args.get("to", ""),
                refused=sum(1 for e in shown if e["refused"]), glass=sum(1 for e in shown if e["glass"]))


def _remote_events(pid: str, params: list[tuple[str, str]]) -> remote.RemoteRecords:
    """The resident's AuditEvents at other provinces' nodes (the same federated search as the records)."""
    out = remote.RemoteRecords()
    if not remote.federated(svc()):
        return out
    number = remote.id_number(fhir_ok("GET", f"Patient/{pid}"))
    if number is None:
        return out
    bundle = remote.search(api(), token_for(pid), number, "AuditEvent", params, count=50)  # the newest 50
    out.asked = True
    remote.read_outcome(bundle, out)
    for entry in bundle.get("entry") or []:
        province = remote.province_of(entry)
        res = entry.get("resource")
        if province and isinstance(res, dict) and (entry.get("search") or {}).get("mode") == "match":
            out.resources.append({**res, "_province": province})
            out.note(province).shown += 1
    return out
