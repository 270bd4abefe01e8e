"""SMART App Launch scopes (v1 and v2), parsed and narrowed. Pure: no Flask, no database.

Follows SMART App Launch 2.0 "Scopes and Launch Context": resource scopes `<context>/<type>.<permissions>`
with context patient | user | system, type a resource type or `*`, permissions the v2 letters `c r u d s`
(in that order) or the v1 words `read` (= `rs`), `write` (= `cud`) and `*` (= `cruds`); v2 granular scopes
carry a search query (`patient/Observation.rs?category=laboratory`). Other scopes (`launch/patient`,
`openid`, `fhirUser`, `offline_access` ...) are kept as words. A client is never granted more than the
scopes it was registered with: `narrow` intersects what is asked with what is registered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode

LETTERS = "cruds"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
CONTEXTS = ("patient", "user", "system")
OTHER_SCOPES = frozenset({"openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                          "offline_access", "online_access"})
_RESOURCE = re.compile(r"^(patient|user|system)/([A-Z][A-Za-z]*|\*)\.([a-z*]+)(?:\?(.+))?$")

# What a FHIR interaction needs, as a v2 permission letter.
INTERACTION_LETTER = {"read": "r", "vread": "r", "history": "r", "search": "s", "create": "c",
                      "update": "u", "patch": "u", "delete": "d", "operation": "r"}


class ScopeError(ValueError):
    """A scope string that is not a valid SMART scope."""


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a resource type or "*"
    perms: frozenset[str]  # subset of "cruds"
    query: tuple[tuple[str, str], ...] = ()  # granular constraint (v2), a search query

    def __str__(self) -> str:
        text = f"{self.context}/{self.resource_type}.{''.join(c for c in LETTERS if c in self.perms)}"
        return text + (f"?{urlencode(self.query)}" if self.query else "")

    def covers(self, resource_type: str | None, letter: str) -> bool:
        return letter in self.perms and (self.resource_type == "*" or self.resource_type == resource_type)


def parse_resource_scope(text: str) -> ResourceScope | None:
    """The resource scope in `text`, None for a non-resource scope; ScopeError when malformed."""
    if "/" not in text or text in OTHER_SCOPES:
        return None
    m = _RESOURCE.match(text)
    if not m:
        if text.split("/", 1)[0] in CONTEXTS:
            raise ScopeError(f"malformed SMART scope {text!r}")
        return None
    context, rtype, perms, query = m.groups()
    letters = V1.get(perms)
    if letters is None:
        ordered = "".join(c for c in LETTERS if c in perms)
        if not perms or ordered != perms:
            raise ScopeError(f"scope {text!r}: permissions must be a subset of 'cruds' in that order, "
                             "or read, write, *")
        letters = perms
    elif query:
        raise ScopeError(f"scope {text!r}: a query is only allowed with v2 permissions (cruds)")
    pairs = tuple(parse_qsl(query, keep_blank_values=False)) if query else ()
    if query and not pairs:
        raise ScopeError(f"scope {text!r}: the query is empty")
    return ResourceScope(context, rtype, frozenset(letters), pairs)


@dataclass(frozen=True)
class ScopeSet:
    """A parsed scope string: resource scopes plus the other words."""

    resource: tuple[ResourceScope, ...]
    other: frozenset[str]
    words: tuple[str, ...]

    def has(self, word: str) -> bool:
        return word in self.other

    def granting(self, resource_type: str | None, letter: str) -> list[ResourceScope]:
        return [s for s in self.resource if s.covers(resource_type, letter)]

    def __str__(self) -> str:
        return " ".join(self.words)


@lru_cache(maxsize=4096)
def parse_scopes(text: str | None, strict: bool = False) -> ScopeSet:
    """Parse a space-separated scope string. Unknown words are kept unless strict (registration)."""
    words = tuple(dict.fromkeys((text or "").split()))
    resource: list[ResourceScope] = []
    other: set[str] = set()
    for w in words:
        rs = parse_resource_scope(w)
        if rs is not None:
            resource.append(rs)
        elif strict and w not in OTHER_SCOPES:
            raise ScopeError(f"unknown scope {w!r}")
        else:
            other.add(w)
    return ScopeSet(tuple(resource), frozenset(other), words)


def intersect(asked: ResourceScope, allowed: ResourceScope) -> ResourceScope | None:
    """The part of `asked` that `allowed` permits, None when nothing."""
    if asked.context != allowed.context:
        return None
    if allowed.resource_type in ("*", asked.resource_type):
        rtype = asked.resource_type
    elif asked.resource_type == "*":
        rtype = allowed.resource_type
    else:
        return None
    perms = asked.perms & allowed.perms
    if not perms:
        return None
    if not allowed.query or asked.query == allowed.query:
        query = asked.query
    elif not asked.query:
        query = allowed.query
    else:
        return None  # two different granular constraints: no simple intersection
    return ResourceScope(asked.context, rtype, perms, query)


def narrow(requested: str | None, registered: str | None, contexts: tuple[str, ...] = CONTEXTS) -> str:
    """What may be granted of `requested` to a client registered with `registered` (RFC 6749 §3.3:
    the server may issue fewer scopes than asked). Resource scopes outside `contexts` are dropped."""
    asked = parse_scopes(requested)
    allowed = parse_scopes(registered)
    granted: list[str] = []
    for word in asked.words:
        rs = parse_resource_scope(word)
        if rs is None:
            if word in allowed.other and word in OTHER_SCOPES:
                granted.append(word)
            continue
        if rs.context not in contexts:
            continue
        for reg in allowed.resource:
            part = intersect(rs, reg)
            if part is None:
                continue
            text = word if part == rs else str(part)
            if text not in granted:
                granted.append(text)
    return " ".join(granted)


DESCRIPTIONS = {
    "c": ("新建", "create"), "r": ("查看", "read"), "u": ("修改", "update"), "d": ("删除", "delete"),
    "s": ("检索", "search"),
}
WORDS = {
    "openid": ("确认您的身份", "confirm who you are"),
    "fhirUser": ("读取您的用户资料", "know your user record"),
    "launch/patient": ("选择就诊人", "know which patient is selected"),
    "launch": ("使用医院系统指定的就诊人", "use the patient the hospital system chose"),
    "offline_access": ("在您离线时继续访问", "keep access while you are offline"),
    "online_access": ("在您在线时继续访问", "keep access while you are online"),
}
CONTEXT_WORDS = {"patient": ("所选就诊人的", "of the selected patient"),
                 "user": ("您有权查看的", "you may see"), "system": ("全部", "all")}


def describe(scope: str) -> tuple[str, str]:
    """(Chinese, English) text for the approval screen."""
    if scope in WORDS:
        return WORDS[scope]
    try:
        rs = parse_resource_scope(scope)
    except ScopeError:
        rs = None
    if rs is None:
        return scope, scope
    zh_ctx, en_ctx = CONTEXT_WORDS[rs.context]
    letters = [c for c in LETTERS if c in rs.perms]
    zh = "、".join(DESCRIPTIONS[c][0] for c in letters)
    en = ", ".join(DESCRIPTIONS[c][1] for c in letters)
    what = "全部记录" if rs.resource_type == "*" else rs.resource_type
    en_what = "all records" if rs.resource_type == "*" else f"{rs.resource_type} records"
    cond = urlencode(rs.query)
    return (f"{zh}{zh_ctx}{what}" + (f"（{cond}）" if cond else ""),
            f"{en} {en_what} {en_ctx}" + (f" ({cond})" if cond else ""))
