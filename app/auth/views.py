"""Server-rendered pages and the OAuth endpoints: /oauth/authorize (login, patient picker, approval; GET
and POST), /oauth/token, /oauth/introspect, /oauth/revoke, /oauth/jwks, /oauth/logout. On an EHR launch
the picker is skipped: the launch's patient is used, and must be one the account is bound to.

The pages are Chinese with English. Every form carries a CSRF token bound to the session cookie; the
session only remembers which account logged in (for 15 minutes). Logins are rate-limited per address and
per normalised phone number, failed ones lock the number with growing back-off (app.auth.accounts), and
every login, failure, lock and end of a lock is recorded in the audit trail (interactions login / unlock).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Response, current_app, g, jsonify, render_template, request, session
from flask.typing import ResponseReturnValue

from app.auth import accounts
from app.auth.models import LoginSession, ResidentAccount, now
from app.auth.policy import PURPOSES
from app.auth.scopes import describe, parse_scopes
from app.core.access import AccessRecord, Principal

bp = Blueprint("ehc_oauth", __name__, template_folder="templates")
LOGIN_SECONDS = 15 * 60
ERROR_TEXT = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # what an OAuth error_description may hold


def _state() -> Any:
    return current_app.extensions["ehc"].extensions["auth"]


def _csrf() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return str(token)


def _page(name: str, status: int = 200, **ctx: Any) -> ResponseReturnValue:
    return render_template(name, action=request.full_path, csrf=_csrf(), **ctx), status


def _logged_in(st: Any) -> ResidentAccount | None:
    key, sid = session.get("account"), session.get("login")
    if not key or not sid or now() - int(session.get("login_at", 0)) > LOGIN_SECONDS:
        return None
    login: LoginSession | None = st.store.get(LoginSession, str(sid))
    if login is None or login.account != key or login.expires_at <= now():
        return None  # logged out (by this browser, or another holding the same cookie), or over
    account: ResidentAccount | None = st.store.get(ResidentAccount, key)
    return account if account is not None and account.active else None


def end_login() -> None:
    """Log the browser out of the authorization server: its login ends for every copy of the cookie."""
    sid = session.get("login")
    if sid:
        _state().store.delete(LoginSession, str(sid))
    session.clear()


TOO_MANY = "尝试次数过多，请稍后再试 / Too many attempts, try again later"
WRONG = "手机号或密码/验证码错误 / Wrong phone number, password or code"


log = logging.getLogger("ehc.auth")
_SMS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ehc-sms")


def _send_sms(st: Any, phone: str) -> None:
    try:
        accounts.send_sms_code(st.store, st.keys, phone, st.sms_sender())
    except Exception:  # noqa: BLE001 - a failed send is the gateway's or the database's, logged, never the page's
        log.exception("auth: the SMS code could not be sent")


def locked_message(seconds: int) -> str:
    minutes = max(1, (seconds + 59) // 60)
    return (f"登录失败次数过多，已暂时锁定，请 {minutes} 分钟后再试 / "
            f"Too many failed logins: locked, try again in {minutes} min")


def _login(st: Any, form: Any, client_id: str | None = None) -> tuple[ResidentAccount | None, str | None]:
    """Handle the login form: (account, message for the page). The per-phone limit and the lock count the
    normalised number; a number without an account is counted, locked and answered exactly like one with."""
    phone = (form.get("phone") or "").strip()
    for key in (f"addr:{request.remote_addr}", f"phone:{accounts.phone_bucket(phone)}"):
        ok, _ = st.login_limiter.allow(key)
        if not ok:
            return None, TOO_MANY
    key = accounts.lock_key(st.keys, phone)
    state = accounts.check_lock(st.store, key)
    if state.expired_lock:
        _audit(st, key, client_id, "unlock", "0",
               f"login lock ended (locked until {state.expired_lock}, after {state.failures} failed logins)")
    if state.locked_for:
        _audit(st, key, client_id, "login", "4", f"login refused: locked for {state.locked_for} s more")
        return None, locked_message(state.locked_for)
    if form.get("step") == "sms":
        # In the background: the answer is the same for every number, and so is its time (looking the account
        # up and calling the SMS gateway happen only for a registered number).
        _SMS.submit(_send_sms, st, phone)
        return None, "如该号码已注册，验证码已发送 / If this number is registered, a code has been sent"
    number = accounts.begin_attempt(st.store, key)
    if not accounts.may_check(state, number):  # beyond the allowed attempts of a burst sent at once
        failed = accounts.record_failure(st.store, key, number)
        _audit(st, key, client_id, "login", "4",
               f"login refused unchecked ({number} attempts in a row): locked for {failed.locked_for} s")
        return None, locked_message(failed.locked_for)
    code = (form.get("sms_code") or "").strip()
    if code:
        account = accounts.login_with_sms(st.store, st.keys, phone, code)
    else:
        account = accounts.login_with_password(st.store, st.keys, phone, form.get("password") or "")
    if account is None:
        failed = accounts.record_failure(st.store, key, number)
        if failed.locked_for:
            _audit(st, key, client_id, "login", "4",
                   f"failed login ({failed.failures} in a row): locked for {failed.locked_for} s")
            return None, locked_message(failed.locked_for)
        _audit(st, key, client_id, "login", "4", f"failed login ({failed.failures} in a row)", known=False)
        return None, WRONG
    accounts.clear_failures(st.store, key)  # this attempt was counted too
    _audit(st, key, client_id, "login", "0", "login", account=account)
    session.clear()
    sid = secrets.token_urlsafe(24)
    st.store.save(LoginSession(sid=sid, account=account.phone_key, expires_at=now() + LOGIN_SECONDS), insert=True)
    session["account"] = account.phone_key
    session["login"] = sid
    session["login_at"] = now()
    return account, None


def _audit(st: Any, key: str, client_id: str | None, interaction: str, outcome: str, text: str,
           account: ResidentAccount | None = None, known: bool = True) -> None:
    """Record a login, a refusal, a lock or its end. The account's own patient is named when the number has
    an account (so the resident sees it among the accesses to their record); the number itself never is."""
    if account is None and known:
        account = st.store.get(ResidentAccount, key)
    patients = list(account.patients[:1]) if account is not None and account.patients else []
    principal = Principal(client_id=client_id, user=f"account:{key[:16]}")
    st.svc.record_access(AccessRecord(interaction, None, [], outcome, 200 if outcome == "0" else 401, principal,
                                      description=text, patient_ids=patients, remote_addr=request.remote_addr))


def _patient_label(svc: Any, pid: str) -> str:
    doc = svc.repo.get_doc("Patient", pid)
    res = (doc or {}).get("res") or {}
    names = res.get("name") or [{}]
    name = names[0].get("text") or (names[0].get("family", "") + "".join(names[0].get("given", [])))
    return f"{name or '未命名 unnamed'}（{res.get('birthDate', '—')}）"


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> ResponseReturnValue:
    st = _state()
    server = st.server
    # authlib quotes an unsupported response_type, or an unregistered redirect_uri, in its error, and raises instead
    # of quoting a character RFC 6749 (section 5.2) does not allow there (", \, non-ASCII, controls). No such
    # redirect_uri is registered (registration takes URIs), so neither is ever redirected to.
    if not ERROR_TEXT.fullmatch(request.values.get("response_type", "")):
        return _page("error.html", 400, error="unsupported_response_type",
                     description="response_type must be code")
    if not ERROR_TEXT.fullmatch(request.values.get("redirect_uri", "")):
        return _page("error.html", 400, error="invalid_request",
                     description="redirect_uri is not one registered for this client")
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as err:
        if err.redirect_uri:
            return server.handle_error_response(None, err)
        return _page("error.html", 400, error=err.error, description=err.description)
    form = request.form if request.method == "POST" else {}
    step = form.get("step")
    if step and not secrets.compare_digest(form.get("csrf", ""), _csrf()):
        return _page("error.html", 400, error="invalid_request", description="表单已过期 / The form has expired")
    client = grant.request.client.doc
    account = _logged_in(st)
    if account is None:
        message = None
        if step in ("login", "sms"):
            account, message = _login(st, form, grant.request.client.client_id)
        if account is None:
            return _page("login.html", 200, client=client, message=message, sms=True)
    scopes = parse_scopes(grant.request.scope)
    needs_patient = scopes.has("launch/patient") or any(s.context == "patient" for s in scopes.resource)
    patients = list(account.patients)
    chosen = form.get("patient") or (patients[0] if len(patients) == 1 else None)
    launch = getattr(grant, "ehc_launch", None)
    if launch is not None:  # EHR launch: the EHR chose the patient; the resident must be bound to it
        if launch.patient not in patients:
            return server.create_authorization_response(grant_user=None, grant=grant)
        needs_patient, chosen = True, launch.patient
    if chosen is not None and chosen not in patients:
        return _page("error.html", 400, error="invalid_request", description="未绑定该就诊人 / Not a bound patient")
    if needs_patient and not patients:
        return server.create_authorization_response(grant_user=None, grant=grant)
    if needs_patient and chosen is None:
        choices = [(p, _patient_label(st.svc, p)) for p in patients]
        return _page("pick.html", 200, client=client, patients=choices)
    if step == "approve":
        if form.get("decision") != "approve":
            return server.create_authorization_response(grant_user=None, grant=grant)
        user = {"account": account.phone_key, "patient": chosen if needs_patient else None,
                "fhir_user": account.fhir_user}
        return server.create_authorization_response(grant_user=user, grant=grant)
    items = [(s, *describe(s)) for s in scopes.words]
    label = _patient_label(st.svc, chosen) if needs_patient and chosen else None
    return _page("approve.html", 200, client=client, scopes=items, patient=chosen, patient_label=label,
                 account=account.phone_hint)


@bp.route("/oauth/logout", methods=["POST", "GET"])
def logout() -> ResponseReturnValue:
    end_login()
    return _page("error.html", 200, error="logged_out", description="已退出 / You have logged out")


def _client_hint() -> str | None:
    """Which client a token request claims to be (for rate limiting only; not authentication)."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            return base64.b64decode(auth[6:]).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
    assertion = request.form.get("client_assertion")
    if assertion and assertion.count(".") == 2:
        try:
            part = assertion.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
            return str(claims.get("sub")) if isinstance(claims, dict) else None
        except (binascii.Error, ValueError):
            return None
    return request.form.get("client_id")


@bp.route("/oauth/token", methods=["POST"])
def token() -> ResponseReturnValue:
    st = _state()
    ok, wait = st.token_limiter.allow(f"{_client_hint() or '-'}|{request.remote_addr}")
    if not ok:
        resp = jsonify(error="slow_down", error_description="too many token requests for this client")
        resp.status_code = 429
        resp.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
        return resp
    purpose = request.form.get("purpose_of_use")
    if purpose is not None and purpose.strip() not in PURPOSES:  # recorded with every access the token makes
        resp = jsonify(error="invalid_request", error_description="purpose_of_use must be an HL7 v3 purpose of use "
                       f"code: {', '.join(sorted(PURPOSES))}")
        resp.status_code = 400
        return resp
    g.ehc_defer_jti = True  # the assertion's jti is written with the token (server.PrivateKeyJWT)
    out: Response = st.server.create_token_response()
    pending = g.pop("ehc_pending_jti", None)
    if pending is not None:  # refused after the client authenticated: the jti is spent all the same
        st.store.insert_once(pending)
    return out


@bp.route("/oauth/introspect", methods=["POST"])
def introspect() -> ResponseReturnValue:
    out: Response = _state().server.create_endpoint_response("introspection")
    return out


@bp.route("/oauth/revoke", methods=["POST"])
def revoke() -> ResponseReturnValue:
    out: Response = _state().server.create_endpoint_response("revocation")
    return out


@bp.route("/oauth/jwks", methods=["GET"])
def jwks() -> ResponseReturnValue:
    return jsonify(_state().keys.public_jwks())
