"""Family (一人绑定多人): bind a relative, act for them, unbind.

Binding is account administration, done by the server's binding service (app.auth.bindings: a RelatedPerson
and a Consent recorded in FHIR), not a read of anybody's records. The relative is found by ID number in the
master patient index and must match the name given; nothing about a non-matching person is revealed.

- A child under 14 is bound by the guardian at once (the Consent is given by the guardian), when the child's
  record gives the account's phone number (the guardian's contact the hospital recorded): a child cannot
  confirm with a login of its own, and its name and ID number alone are known to too many.
- Anybody 14 or older confirms with their own login: the request waits until the relative signs in to the
  portal and accepts it under "Family" (the relative needs their own account, bound to themselves).

Acting for a relative is a new SMART authorization for that patient: the token's patient is the relative and
its user the account holder, so every FHIR call — and its AuditEvent — names the proxy as requestor and the
relative as patient.
"""

from __future__ import annotations

import re
import secrets
import time
import unicodedata
from typing import Any

from flask import redirect, request, url_for
from flask.typing import ResponseReturnValue

from app.auth.accounts import account_key
from app.auth.bindings import RELATIONSHIPS, bind, unbind
from app.auth.models import Binding, ResidentAccount
from app.auth.plugin import auth_state
from app.core.timeutil import today_in_china
from app.mpi.identifiers import age_of
from app.mpi.plugin import identifier_registry, master_index
from app.portal.registration import CLIENT_ID
from app.portal.web import (
    NeedLogin,
    api,
    bp,
    login_required,
    page,
    patient_label,
    said,
    sess,
    start_authorization,
    svc,
    t,
    take_said,
    token_for,
)

ID_CARD_SYSTEM = "urn:oid:2.16.156.10011.1.3"
GUARDIAN_AGE = 14
REQUESTS = "portal_bind_requests"
RELATIVES = "portal_relatives"
# what the account holder is to the relative
AS_GUARDIAN = {"FTH": ("父亲", "Father"), "MTH": ("母亲", "Mother"), "GUARD": ("监护人", "Guardian")}
AS_RELATIVE = {"CHILD": ("子女", "Son or daughter"), "SPS": ("配偶", "Spouse"), "SIB": ("兄弟姐妹", "Sibling"),
               "FAMMEMB": ("其他家庭成员", "Other family member")}
CHOICES = {**AS_GUARDIAN, **AS_RELATIVE}


def _db() -> Any:
    return svc().handle.db


def _store() -> Any:
    return auth_state(svc()).store


def _account() -> ResidentAccount | None:
    acct: ResidentAccount | None = _store().get(ResidentAccount, sess().get("account") or "")
    return acct if acct is not None and acct.active else None


def relationship_text(code: str | None) -> str:
    if code in CHOICES:
        return t(*CHOICES[code])
    return RELATIONSHIPS.get(code or "", code or "")


def _relatives(account: str) -> list[dict[str, Any]]:
    out = []
    labels = sess().get("labels") or {}
    meta = {d["patient"]: d for d in _db()[RELATIVES].find({"account": account})}
    for b in _store().collection(Binding).find({"account": account, "active": {"$ne": False}}):
        if b.get("relationship") == "SELF":
            continue
        pid = b["patient"]
        name = (meta.get(pid) or {}).get("name") or labels.get(pid) or t("已绑定的家人", "Bound relative")
        out.append({"patient": pid, "name": name, "relationship": relationship_text(b.get("relationship")),
                    "has_token": pid in (sess().get("tokens") or {})})
    return out


@bp.route("/family", methods=["GET"])
@login_required
def family() -> ResponseReturnValue:
    account = str(sess().get("account"))
    me = sess().get("self")
    outgoing = list(_db()[REQUESTS].find({"account": account, "status": "pending"}))
    incoming = list(_db()[REQUESTS].find({"patient": me, "status": "pending"})) if me else []
    for req in incoming:
        other = _store().get(ResidentAccount, req["account"])
        req["from"] = other.phone_hint if other else "—"
        req["as"] = relationship_text(req.get("relationship"))
    return page("portal/family.html", relatives=_relatives(account), outgoing=outgoing, incoming=incoming,
                guardian=AS_GUARDIAN, adult=AS_RELATIVE, message=take_said(), me=me)


def _done(message: str) -> ResponseReturnValue:
    return said("portal.family", message)


@bp.route("/family/bind", methods=["POST"])
@login_required
def family_bind() -> ResponseReturnValue:
    account = _account()
    if account is None:
        return redirect(url_for("portal.login", expired=1))
    form = request.form
    # NFKC: an input method's full-width digits and letters (１１０…Ｘ) are the number's ASCII ones
    id_number = re.sub(r"\s", "", unicodedata.normalize("NFKC", form.get("id_number") or "")).upper()
    name = re.sub(r"\s", "", form.get("name") or "")
    rel = form.get("relationship") or ""
    errors = {}
    if not re.fullmatch(r"[0-9]{17}[0-9X]", id_number):
        errors["id_number"] = t("请输入18位身份证号码", "Enter the 18-character ID card number")
    if not name:
        errors["name"] = t("请输入姓名", "Enter the name")
    if rel not in CHOICES:
        errors["relationship"] = t("请选择关系", "Choose the relationship")
    ok, _ = auth_state(svc()).login_limiter.allow(f"bind:{account.phone_key}")
    if not ok:
        errors["id_number"] = t("尝试次数过多，请稍后再试", "Too many attempts, try again later")
    found = None
    if not errors:
        found = master_index(svc()).find(ID_CARD_SYSTEM, id_number)
        if found is None or patient_label(found.get("res")).replace(" ", "") != name:
            errors["id_number"] = t("身份证号与姓名不匹配，或该居民尚未建档",
                                    "The ID number and name do not match, or this resident has no record yet")
    if errors or found is None:
        return page("portal/family.html", 400, relatives=_relatives(account.phone_key), outgoing=[], incoming=[],
                    guardian=AS_GUARDIAN, adult=AS_RELATIVE, errors=errors, form=form, me=sess().get("self"))
    pid = str(found["_id"])
    if pid in account.patients:
        return _done(t("已绑定该家人", "This relative is bound already"))
    age = age_of(found.get("res") or {}, identifier_registry(svc()), today_in_china())
    child = age is not None and age < GUARDIAN_AGE
    if child and rel not in AS_GUARDIAN:
        return _done(t("未满14岁的儿童须由父母或监护人绑定", "A child under 14 is bound by a parent or guardian"))
    if child and not lists_phone(found.get("res") or {}, account):
        return _done(t("孩子的档案未登记您的手机号。请在医院为孩子登记监护人手机号后再绑定",
                       "The child's record does not give your phone number: have the hospital record it as "
                       "the guardian's contact, then bind again"))
    _db()[RELATIVES].replace_one({"_id": f"{account.phone_key}|{pid}"}, {
        "_id": f"{account.phone_key}|{pid}", "account": account.phone_key, "patient": pid, "name": name,
        "relationship": rel}, upsert=True)
    if child:
        bind(svc(), _store(), account, pid, rel)
        return _done(t("已绑定", "Bound") + f": {name}")
    _db()[REQUESTS].replace_one({"_id": f"{account.phone_key}|{pid}"}, {
        "_id": f"{account.phone_key}|{pid}", "account": account.phone_key, "patient": pid, "name": name,
        "relationship": rel, "status": "pending", "created": int(time.time()), "nonce": secrets.token_hex(8)},
        upsert=True)
    return _done(t("已发送绑定请求，请家人用自己的手机号登录门户，在“家人”页确认",
                   "Request sent: your relative confirms it by signing in to the portal with their own number "
                   "and accepting it under Family"))


def lists_phone(resource: dict[str, Any], account: ResidentAccount) -> bool:
    """Whether a Patient record gives the account's phone number, as its own telecom or a contact's (a child is
    registered with a guardian's phone). A child cannot confirm a binding with a login of its own, and its name
    and ID number are known to many (a school, a clinic): the number the hospital recorded is what proves the
    account holder is the guardian."""
    keys = auth_state(svc()).keys
    telecoms = list(resource.get("telecom") or [])
    for contact in resource.get("contact") or []:
        if isinstance(contact, dict):
            telecoms += contact.get("telecom") or []
    return any(isinstance(telecom, dict) and telecom.get("system") in ("phone", "sms")
               and account_key(keys, str(telecom.get("value") or "")) == account.phone_key  # None: a landline
               for telecom in telecoms)


@bp.route("/family/requests", methods=["POST"])
@login_required
def family_request() -> ResponseReturnValue:
    me = sess().get("self")
    # Taken from pending in one findAndModify: a form sent twice (a double click) is decided once.
    req = _db()[REQUESTS].find_one_and_update(
        {"_id": request.form.get("request") or "", "status": "pending", "patient": me or ""},
        {"$set": {"status": "deciding"}})
    if req is None or not me:
        return _done(t("请求不存在或已处理", "The request is unknown or has been handled"))
    accept = request.form.get("decision") == "accept"
    decided: dict[str, Any] = {"status": "pending"}  # put back when the binding cannot be made
    try:
        if accept:
            requester = _store().get(ResidentAccount, req["account"])
            if requester is None:
                return _done(t("请求不存在或已处理", "The request is unknown or has been handled"))
            bind(svc(), _store(), requester, me, req["relationship"])
        decided = {"status": "accepted" if accept else "declined", "decided": int(time.time())}
    finally:
        _db()[REQUESTS].update_one({"_id": req["_id"]}, {"$set": decided})
    return _done(t("已同意绑定", "Binding accepted") if accept else t("已拒绝", "Declined"))


@bp.route("/family/act", methods=["POST"])
@login_required
def family_act() -> ResponseReturnValue:
    s = sess()
    pid = request.form.get("patient") or ""
    if pid == "self":
        pid = s.get("self") or ""
    account = _account()
    if account is None or pid not in account.patients:
        return _done(t("未绑定该家人", "Not a bound relative"))
    try:
        token_for(pid)
    except NeedLogin:  # no token yet for this relative: authorize one
        return start_authorization(want=pid)
    s.set("acting", pid)
    return redirect(url_for("portal.card"))


@bp.route("/family/unbind", methods=["POST"])
@login_required
def family_unbind() -> ResponseReturnValue:
    s = sess()
    pid = request.form.get("patient") or ""
    account = _account()
    if account is None or pid not in account.patients or pid == s.get("self"):
        return _done(t("未绑定该家人", "Not a bound relative"))
    unbind(svc(), _store(), account, pid)
    _db()[RELATIVES].delete_one({"_id": f"{account.phone_key}|{pid}"})
    tokens = s.get("tokens") or {}
    tok = tokens.pop(pid, None)
    if tok:
        if tok.get("refresh"):
            api().revoke(CLIENT_ID, tok["refresh"], "refresh_token")
        api().revoke(CLIENT_ID, tok["access"], "access_token")
    s.set("tokens", tokens)
    if s.get("acting") == pid:
        s.set("acting", s.get("self") if s.get("self") in tokens else next(iter(tokens), None))
    return _done(t("已解除绑定", "Unbound"))
