"""The portal's FHIR and OAuth client. It calls the server's public HTTP API in-process (the WSGI app, through
werkzeug's test client), always with the resident's bearer token, so every access passes the same scope,
compartment, consent and audit checks as any other SMART app. Each call runs in a fresh application context:
the FHIR layer keeps per-request state in flask.g, which must not leak between the portal's request and the
calls it makes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask

FJ = "application/fhir+json"


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def diagnostics(self) -> str:
        if isinstance(self.body, dict):
            issues = self.body.get("issue") or []
            if issues:
                return str(issues[0].get("diagnostics") or issues[0].get("code") or "")
            return str(self.body.get("error_description") or self.body.get("error") or "")
        return ""


class ApiError(Exception):
    def __init__(self, answer: Answer) -> None:
        super().__init__(f"HTTP {answer.status}: {answer.diagnostics()}")
        self.answer = answer


class PortalApi:
    """One per request: the app, the browser's address and host (so `aud` and audit match the real caller)."""

    def __init__(self, app: Flask, host: str, remote_addr: str | None, scheme: str = "http") -> None:
        self.app = app
        self.host = host
        self.remote_addr = remote_addr or "127.0.0.1"
        self.scheme = scheme

    def open(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
              content_type: str | None = None) -> Answer:
        client = self.app.test_client(use_cookies=False)
        with self.app.app_context():
            resp = client.open(path, method=method, headers=headers, data=body, content_type=content_type,
                               base_url=f"{self.scheme}://{self.host}",
                               environ_base={"REMOTE_ADDR": self.remote_addr})
            data = resp.get_data()
            parsed: Any = None
            if resp.mimetype and "json" in resp.mimetype:
                try:
                    parsed = json.loads(data)
                except ValueError:
                    parsed = None
            return Answer(resp.status_code, parsed, dict(resp.headers), data)

    # -- FHIR --------------------------------------------------------------------------------------------

    def fhir(self, method: str, path: str, token: str, params: dict[str, Any] | list[tuple[str, str]] | None = None,
             body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
             accept: str = FJ) -> Answer:
        url = "/fhir/" + path.lstrip("/")
        if params:
            url += "?" + urlencode(params, doseq=True)
        hdrs = {"Authorization": f"Bearer {token}", "Accept": accept, **(headers or {})}
        raw = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        return self.open(method, url, hdrs, raw, FJ if raw is not None else None)

    def get(self, path: str, token: str, **params: Any) -> Answer:
        return self.fhir("GET", path, token, params or None)

    # -- OAuth ---------------------------------------------------------------------------------------------

    def _form(self, path: str, form: dict[str, str]) -> Answer:
        return self.open("POST", path, {"Accept": "application/json"}, urlencode(form).encode(),
                          "application/x-www-form-urlencoded")

    def token(self, form: dict[str, str]) -> Answer:
        return self._form("/oauth/token", form)

    def revoke(self, client_id: str, token: str, hint: str) -> Answer:
        return self._form("/oauth/revoke", {"token": token, "token_type_hint": hint, "client_id": client_id})
