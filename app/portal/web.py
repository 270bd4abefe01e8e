"""The portal blueprint's frame: session, CSRF on every POST, security headers (a strict CSP: scripts and
styles only from /portal/static, no inline script), language and large-text preferences, and the SMART
authorization-code + PKCE login against the server's own /oauth endpoints."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from itsdangerous import BadData, URLSafeTimedSerializer
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from werkzeug.exceptions import HTTPException

from app.auth.plugin import auth_state
from app.auth.smart import fhir_base, server_root
from app.auth.views import end_login
from app.portal import session as portal_session
from app.portal.fhirclient import Answer, ApiError, PortalApi
from app.portal.registration import CLIENT_ID, SCOPES, ensure_client

bp = Blueprint("portal", __name__, url_prefix="/portal", template_folder="templates", static_folder="static",
               static_url_path="/static")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'")
PENDING_SECONDS = 600
log = logging.getLogger("ehc.portal")
_registered: set[str] = set()


def svc() -> Any:
    return current_app.extensions["ehc"]


def sess() -> portal_session.PortalSession:
    return portal_session.current()


SAID_SECONDS = 300  # how long a page's "done" message can be shown from its link


def _said_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or "", salt="ehc-portal-said")


def said(endpoint: str, message: str) -> ResponseReturnValue:
    """Back to a page, which then says `message`. The message rides in the URL signed with the server's key: a
    link cannot make the portal say anything (a fake helpline number) as its own words."""
    return redirect(url_for(endpoint, m=_said_signer().dumps(message)))


def take_said() -> str | None:
    """The message a page was sent back with (said); nothing for one the server did not sign, or an old one."""
    try:
        message = _said_signer().loads(request.args.get("m") or "", max_age=SAID_SECONDS)
    except BadData:
        return None
    return str(message) if message else None


def api() -> PortalApi:
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # usable from worker threads too
    return PortalApi(app, request.host, request.remote_addr, request.scheme)


def lang() -> str:
    return "en" if sess().get("lang") == "en" else "zh"


def t(zh: str, en: str) -> str:
    return en if lang() == "en" else zh


@bp.app_template_global("t")
def _t(zh: str, en: str) -> str:
    return t(zh, en)


@bp.before_request
def _guard() -> ResponseReturnValue | None:
    if request.method == "POST":
        given = request.form.get("csrf") or request.headers.get("X-CSRF-Token")
        if not sess().check_csrf(given):
            return page("portal/message.html", 400, title=t("表单已过期", "The form has expired"),
                        text=t("请返回重新操作。", "Please go back and try again."))
    return None


@bp.after_request
def _headers(resp: Response) -> Response:
    h = resp.headers
    if resp.mimetype == "text/html":
        h["Content-Security-Policy"] = CSP
    h.setdefault("Cache-Control", "no-store")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    return portal_session.finish(resp)


def page(_template: str, _code: int = 200, **ctx: Any) -> ResponseReturnValue:
    s = sess()
    acting = s.get("acting")
    labels = s.get("labels") or {}
    return render_template(_template, lang=lang(), large=bool(s.get("large")), csrf=s.csrf, logged_in=s.logged_in,
                           acting=acting, acting_label=labels.get(acting or "", ""),
                           proxy=bool(acting and acting != s.get("self")), nav=request.endpoint, **ctx), _code


def login_required(view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        if not sess().logged_in or not sess().get("acting"):
            return redirect(url_for("portal.login"))
        try:
            return view(*args, **kwargs)
        except NeedLogin:
            s = sess()
            me = s.get("self")
            if s.get("acting") != me and me in (s.get("tokens") or {}):
                # the relative's token is refused (unbound, the binding's consent revoked, the grant expired):
                # the resident is still signed in as themselves
                s.set("acting", me)
                return said("portal.family", t(
                    "无法再为该家人办理（绑定已解除或授权已结束），已切换回本人",
                    "You can no longer act for this relative (the binding or its consent has ended); "
                    "back to yourself"))
            return redirect(url_for("portal.login", expired=1))
    return wrapper


class NeedLogin(Exception):
    """The session holds no usable token for the patient: sign in again."""


# -- tokens ------------------------------------------------------------------------------------------------

def token_for(pid: str | None = None) -> str:
    """A live access token for `pid` (default: the patient acted for), refreshed with the refresh token."""
    s = sess()
    pid = pid or s.get("acting")
    tokens: dict[str, Any] = s.get("tokens") or {}
    tok = tokens.get(pid or "")
    if not tok:
        raise NeedLogin()
    if tok["exp"] - 30 > time.time():
        return str(tok["access"])
    if tok.get("refresh"):
        ans = api().token({"grant_type": "refresh_token", "refresh_token": tok["refresh"], "client_id": CLIENT_ID})
        if ans.ok and isinstance(ans.body, dict):
            tokens[str(pid)] = _token_entry(ans.body)
            s.set("tokens", tokens)
            return str(ans.body["access_token"])
    tokens.pop(str(pid), None)
    s.set("tokens", tokens)
    raise NeedLogin()


def _token_entry(body: dict[str, Any]) -> dict[str, Any]:
    return {"access": body["access_token"], "refresh": body.get("refresh_token"),
            "exp": int(time.time()) + int(body.get("expires_in", 0))}


def fhir(method: str, path: str, pid: str | None = None, **kw: Any) -> Answer:
    """A FHIR call with the token of `pid` (default: the patient acted for); 401 means sign in again."""
    ans = api().fhir(method, path, token_for(pid), **kw)
    if ans.status == 401:
        tokens = sess().get("tokens") or {}
        tokens.pop(pid or sess().get("acting"), None)
        sess().set("tokens", tokens)
        raise NeedLogin()
    return ans


def fhir_ok(method: str, path: str, pid: str | None = None, **kw: Any) -> Any:
    ans = fhir(method, path, pid, **kw)
    if not ans.ok:
        raise ApiError(ans)
    return ans.body


def patient_label(resource: dict[str, Any] | None) -> str:
    names = (resource or {}).get("name") or [{}]
    n = names[0]
    return str(n.get("text") or (n.get("family", "") + "".join(n.get("given", []))) or "—")


# -- login (SMART standalone launch, authorization code + PKCE) ---------------------------------------------

def start_authorization(want: str | None = None) -> ResponseReturnValue:
    root = server_root(svc())
    redirect_uri = f"{root}/portal/callback"
    if redirect_uri not in _registered:
        client = ensure_client(auth_state(svc()).store, svc().settings.province, redirect_uri,
                               from_request=not svc().settings.base_url)
        if redirect_uri not in client.redirect_uris:
            return page("portal/message.html", 500, title=t("门户未配置", "The portal is not configured"),
                        text=t("请设置 EHC_BASE_URL（门户的 https 地址）；未设置时门户只在本机地址上提供。",
                               "Set EHC_BASE_URL (the portal's https address); without it the portal is served "
                               "on loopback only."))
        _registered.add(redirect_uri)
    state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    s = sess()
    now = int(time.time())
    pending = {k: v for k, v in (s.get("pending") or {}).items() if v["t"] > now - PENDING_SECONDS}
    pending[state] = {"v": verifier, "t": now, "want": want, "uri": redirect_uri}
    s.set("pending", dict(list(pending.items())[-4:]))
    params = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": redirect_uri, "scope": SCOPES,
              "state": state, "aud": fhir_base(svc()), "code_challenge": challenge,
              "code_challenge_method": "S256"}
    return redirect(f"{root}/oauth/authorize?{urlencode(params)}")


@bp.route("/", methods=["GET"])
def home() -> ResponseReturnValue:
    return redirect(url_for("portal.card" if sess().logged_in else "portal.login"))


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if request.method == "POST":
        return start_authorization()
    if sess().logged_in and not request.args.get("expired"):
        return redirect(url_for("portal.card"))
    note = None
    if request.args.get("expired"):
        note = t("登录已过期，请重新登录。", "Your sign-in has expired. Please sign in again.")
    elif request.args.get("bye"):
        note = t("您已安全退出。", "You have signed out.")
    elif request.args.get("denied"):
        note = t("您未授权门户访问，未登录。", "You did not authorise the portal; you are not signed in.")
    return page("portal/login.html", note=note)


@bp.route("/callback", methods=["GET"])
def callback() -> ResponseReturnValue:
    s = sess()
    pending = (s.get("pending") or {}).copy()
    entry = pending.pop(request.args.get("state") or "", None)
    s.set("pending", pending)
    if entry is None or entry["t"] < time.time() - PENDING_SECONDS:
        return page("portal/message.html", 400, title=t("登录已过期", "The sign-in has expired"),
                    text=t("请重新登录。", "Please sign in again."), link=url_for("portal.login"))
    if request.args.get("error"):
        return redirect(url_for("portal.login", denied=1))
    ans = api().token({"grant_type": "authorization_code", "code": request.args.get("code") or "",
                       "redirect_uri": entry["uri"], "client_id": CLIENT_ID, "code_verifier": entry["v"]})
    body = ans.body if isinstance(ans.body, dict) else {}
    if not ans.ok or not body.get("patient") or not body.get("id_token"):
        return page("portal/message.html", 400, title=t("登录失败", "Sign-in failed"),
                    text=ans.diagnostics() or t("请重新登录。", "Please sign in again."), link=url_for("portal.login"))
    try:
        keys = KeySet.import_key_set(auth_state(svc()).keys.public_jwks())  # type: ignore[arg-type]
        claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    except (JoseError, ValueError):
        abort(400)
    account = str(claims["sub"])
    fhir_user = str(claims.get("fhirUser") or "").rsplit("/", 2)
    patient = str(body["patient"])
    if s.get("account") != account:  # a new sign-in (or another person): start clean, under a new session id
        for key in ("tokens", "labels", "acting", "self"):
            s.pop(key)
        s.rotate()
    s.set("account", account)
    if len(fhir_user) == 3 and fhir_user[1] == "Patient":
        s.set("self", fhir_user[2])
    tokens = s.get("tokens") or {}
    tokens[patient] = _token_entry(body)
    s.set("tokens", tokens)
    s.set("acting", patient)
    labels = s.get("labels") or {}
    read = api().get(f"Patient/{patient}", tokens[patient]["access"])
    labels[patient] = patient_label(read.body if read.ok else None)
    s.set("labels", labels)
    return redirect(url_for("portal.card"))


@bp.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    s = sess()
    for tok in (s.get("tokens") or {}).values():
        if tok.get("refresh"):  # revoking the refresh token revokes the access tokens issued from it
            api().revoke(CLIENT_ID, tok["refresh"], "refresh_token")
        api().revoke(CLIENT_ID, tok["access"], "access_token")
    s.end()
    end_login()  # the OAuth login ends too, for this browser and any copy of its cookie
    return redirect(url_for("portal.login", bye=1))


@bp.route("/prefs", methods=["POST"])
def prefs() -> ResponseReturnValue:
    s = sess()
    if request.form.get("lang") in ("zh", "en"):
        s.set("lang", request.form["lang"])
    if request.form.get("large") in ("0", "1"):
        s.set("large", request.form["large"] == "1")
    return redirect(_back(request.form.get("next") or ""))


def _back(path: str) -> str:
    """Where the preference form came from, when that is a portal page one can GET; else the home page."""
    target = path.split("?", 1)[0]
    if not target.startswith("/portal/") or "//" in path or "\\" in path:
        return str(url_for("portal.home"))
    try:
        current_app.url_map.bind("localhost").match(target, method="GET")
    except HTTPException:
        return str(url_for("portal.home"))
    return path



@bp.errorhandler(HTTPException)
@bp.errorhandler(404)  # by code too: Flask asks the app's handler for a code before a blueprint's for a class
@bp.errorhandler(405)
@bp.errorhandler(413)
def _http_error(err: HTTPException) -> ResponseReturnValue:
    code = err.code or 500
    title = t("页面不存在", "Not found") if code == 404 else t("无法完成请求", "The request could not be completed")
    return page("portal/message.html", code, title=title, text=f"HTTP {code}", link=url_for("portal.home"))


@bp.errorhandler(ApiError)
@bp.errorhandler(Exception)
def _error(err: Exception) -> ResponseReturnValue:
    """Never a traceback on a page: the error is logged, the resident gets a plain message."""
    log.exception("portal: %s failed", request.path)
    text = t("服务暂时不可用，请稍后再试。", "The service is unavailable; please try again later.")
    if isinstance(err, ApiError) and err.answer.status == 403:
        text = t("没有访问权限：", "Not allowed: ") + err.answer.diagnostics()
    return page("portal/message.html", 500 if not isinstance(err, ApiError) else 502,
                title=t("出错了", "Something went wrong"), text=text, link=url_for("portal.home"))
