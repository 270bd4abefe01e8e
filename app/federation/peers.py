"""Calls to a peer node: SMART Backend Services tokens obtained with this node's key, then the request.

A token is asked for with grant client_credentials, scope system/*.rs and a client assertion (RFC 7523:
iss = sub = "node-<own province>", aud = the peer's token endpoint, 60 s, a fresh jti), and kept until 30 s
before it expires (tokens live 300 s). A 401 drops it and the call is made once more with a new one.
Every failure to reach a peer (refused, timed out, 5xx from a proxy) is PeerUnreachable, so callers can answer
with what they have.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import ProxyHandler, Request, build_opener

from joserfc import jwt

from app.federation.assertions import HEADER
from app.federation.keys import ALG, NodeKey
from app.federation.registry import NODE_SCOPES, Node, node_client_id

_OPENER = build_opener(ProxyHandler({}))  # node addresses are never reached through an HTTP proxy


class PeerUnreachable(RuntimeError):
    def __init__(self, province: str, reason: str) -> None:
        super().__init__(f"province {province} node is unreachable: {reason}")
        self.province = province
        self.reason = reason


class PeerRefused(RuntimeError):
    def __init__(self, province: str, status: int, body: Any) -> None:
        text = _diagnostics(body) or str(body)[:300]
        super().__init__(f"province {province} node refused the call ({status}): {text}")
        self.province, self.status, self.body = province, status, body


def _diagnostics(body: Any) -> str | None:
    if isinstance(body, dict):
        if body.get("resourceType") == "OperationOutcome":
            return "; ".join(str(i.get("diagnostics", "")) for i in body.get("issue") or [])
        if body.get("error"):
            return f"{body.get('error')}: {body.get('error_description', '')}"
    return None


def http(method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None,
         form: dict[str, str] | None = None, timeout: float = 3.0, province: str = "?") -> tuple[int, Any]:
    data = None
    hdrs = {"Accept": "application/fhir+json, application/json", **(headers or {})}
    if form is not None:
        data = urlencode(form).encode()
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body, ensure_ascii=False).encode()
        hdrs["Content-Type"] = "application/json"
    try:
        with _OPENER.open(Request(url, data=data, headers=hdrs, method=method), timeout=timeout) as resp:
            return resp.status, _json(resp.read())
    except HTTPError as err:
        payload = _json(err.read())
        if err.code in (502, 503, 504):
            raise PeerUnreachable(province, f"HTTP {err.code}") from None
        return err.code, payload
    except (URLError, TimeoutError, ConnectionError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PeerUnreachable(province, str(reason)) from None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"raw": raw[:300].decode("utf-8", "replace")}


class Peers:
    def __init__(self, own_province: str, key: NodeKey) -> None:
        self.own = own_province
        self.key = key
        self._tokens: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def client_assertion(self, node: Node, jti: str | None = None) -> str:
        t = int(time.time())
        cid = node_client_id(self.own)
        claims = {"iss": cid, "sub": cid, "aud": f"{node.root}/oauth/token", "iat": t, "exp": t + 60,
                  "jti": jti or uuid.uuid4().hex}
        return jwt.encode({"alg": ALG, "kid": self.key.kid, "typ": "JWT"}, claims, self.key.key, algorithms=[ALG])

    def token(self, node: Node, timeout: float = 3.0, fresh: bool = False) -> str:
        hit = self._tokens.get(node.province)
        if hit and not fresh and hit[0] > time.monotonic():
            return hit[1]
        form = {"grant_type": "client_credentials", "scope": NODE_SCOPES,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": self.client_assertion(node)}
        status, body = http("POST", f"{node.root}/oauth/token", form=form, timeout=timeout, province=node.province)
        if status != 200 or not isinstance(body, dict) or not body.get("access_token"):
            raise PeerRefused(node.province, status, body)
        value = str(body["access_token"])
        with self._lock:
            self._tokens[node.province] = (time.monotonic() + max(int(body.get("expires_in", 300)) - 30, 5), value)
        return value

    def call(self, node: Node, method: str, path: str, *, params: list[tuple[str, str]] | None = None,
             body: Any = None, requester: str | None = None, timeout: float = 3.0) -> tuple[int, Any]:
        """method on <node root><path> (path starts with "/"), authenticated as this node."""
        deadline = time.monotonic() + timeout
        url = f"{node.root}{path}" + (f"?{urlencode(params)}" if params else "")
        for attempt in range(2):
            left = max(deadline - time.monotonic(), 0.2)
            headers = {"Authorization": f"Bearer {self.token(node, left, fresh=attempt > 0)}"}
            if requester:
                headers[HEADER] = requester
            left = max(deadline - time.monotonic(), 0.2)
            status, out = http(method, url, body=body, headers=headers, timeout=left, province=node.province)
            if status != 401 or attempt:
                return status, out
        return status, out
