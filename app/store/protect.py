"""Encryption at rest of resident ID numbers and phone numbers.

In the stored resource these values are replaced by `enc:<key id>:<SM4-GCM ciphertext>`; in the search index,
the sort keys and the posting lists every occurrence of them is replaced by `#<SM3-HMAC blind index>`, so exact
searches still work and a database dump shows neither. Search values for the protected parameters are blinded
the same way before they are compiled. Which systems are protected is data: fhir_profiles/protected-fields.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from app.crypto import FieldCipher
from app.search.request import FilterValue, SearchRequest

PREFIX = "enc:"
_DIGITS = re.compile(r"\D")
Path_ = tuple[str | int, ...]  # keys and list indexes from the resource down to a value


def _replaced(res: dict[str, Any], changes: list[tuple[Path_, Any]]) -> dict[str, Any]:
    """A copy of `res` with the values at `changes` set: only the objects and arrays on the way to a change are
    copied, the rest is shared (a deep copy of every resource was a tenth of an import's CPU)."""
    out = dict(res)
    copied: dict[Path_, Any] = {(): out}
    for path, value in changes:
        parent: Any = out
        for depth in range(1, len(path)):
            here = path[:depth]
            if here not in copied:
                child = parent[path[depth - 1]]
                copied[here] = list(child) if isinstance(child, list) else dict(child)
                parent[path[depth - 1]] = copied[here]
            parent = copied[here]
        parent[path[-1]] = value
    return out


def _set_in_place(res: dict[str, Any], changes: list[tuple[Path_, Any]]) -> None:
    for path, value in changes:
        parent: Any = res
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value


class FieldProtector:
    def __init__(self, cipher: FieldCipher, identifier_systems: set[str], telecom_systems: set[str],
                 search_params: dict[str, str]) -> None:
        self.cipher = cipher
        self.identifier_systems = identifier_systems
        self.telecom_systems = telecom_systems
        self.search_params = search_params

    @classmethod
    def from_profiles(cls, cipher: FieldCipher, profiles_dir: Path) -> FieldProtector:
        conf = json.loads((profiles_dir / "protected-fields.json").read_text(encoding="utf-8"))
        return cls(cipher, set(conf["identifierSystems"]), set(conf["telecomSystems"]), conf["searchParameters"])

    def blind(self, value: str) -> str:
        return "#" + self.cipher.blind_index(value)

    # -- stored documents -------------------------------------------------------------------------------

    def _protected(self, res: dict[str, Any]) -> list[tuple[Path_, str]]:
        """Where every Identifier and ContactPoint of a protected system holds its value, wherever it stands in
        the resource (its own identifiers and telecoms, a logical reference by identifier such as
        `subject.identifier`, contained resources): the path to the value and the value."""
        out: list[tuple[Path_, str]] = []
        stack: list[tuple[Path_, Any]] = [((), res)]
        while stack:
            path, node = stack.pop()
            if isinstance(node, list):
                stack.extend(((*path, i), v) for i, v in enumerate(node) if isinstance(v, dict | list))
                continue
            system, value = node.get("system"), node.get("value")
            if isinstance(value, str) and isinstance(system, str) and (
                    system in self.identifier_systems or system in self.telecom_systems):
                out.append(((*path, "value"), value))
            stack.extend(((*path, k), v) for k, v in node.items() if isinstance(v, dict | list))
        return out

    def encode(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A stored document with the protected values encrypted and blinded (ix, so computed in clear). `doc`
        is left as it is: the new one shares what it does not change with it."""
        res = doc.get("res")
        if not res:
            return doc
        found = [(path, clear) for path, clear in self._protected(res) if not clear.startswith(PREFIX)]
        if not found:
            return doc
        secrets: dict[str, str] = {}
        for _, clear in found:
            secrets[clear] = self.blind(clear)
            digits = _DIGITS.sub("", clear)
            if len(digits) >= 6:
                secrets.setdefault(digits, self.blind(digits))
        doc = dict(doc)
        doc["res"] = _replaced(res, [(path, PREFIX + self.cipher.encrypt(clear)) for path, clear in found])
        ordered = sorted(secrets.items(), key=lambda kv: -len(kv[0]))
        for part in ("ix", "so"):
            if part in doc:
                doc[part] = _replace(doc[part], ordered)
        return doc

    def decode(self, doc: dict[str, Any] | None, owned: bool = False) -> dict[str, Any] | None:
        """The document with protected values decrypted. `owned`: the caller has the only reference (it was
        just read from the database), so it is decrypted in place instead of copied."""
        if not doc or not doc.get("res"):
            return doc
        changes = [(path, self.cipher.decrypt(value[len(PREFIX):]))
                   for path, value in self._protected(doc["res"]) if value.startswith(PREFIX)]
        if not changes:
            return doc
        if owned:
            _set_in_place(doc["res"], changes)
            return doc
        return {**doc, "res": _replaced(doc["res"], changes)}

    def reencrypt(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The same document under the current field key (key rotation)."""
        res = doc.get("res")
        if not res:
            return doc
        changes = [(path, PREFIX + self.cipher.reencrypt(value[len(PREFIX):]))
                   for path, value in self._protected(res) if value.startswith(PREFIX)]
        return {**doc, "res": _replaced(res, changes)}

    # -- search values ----------------------------------------------------------------------------------

    def blind_request(self, request: SearchRequest) -> None:
        """Blind the values of protected search parameters in place (the stored index holds blind tokens)."""
        for flt in request.filters:
            kind = self.search_params.get(flt.code)
            if kind is None or flt.chain is not None or flt.has is not None or flt.modifier not in (None, "not"):
                continue
            values: list[FilterValue] = []
            for v in flt.values:
                values.extend(self._variants(kind, v))
            flt.values = values

    def _variants(self, kind: str, v: FilterValue) -> list[FilterValue]:
        raw = v.value
        if "|" in raw:
            system, code = raw.split("|", 1)
            protected = system in (self.identifier_systems if kind == "identifier" else self.telecom_systems)
            if protected and code:
                return [FilterValue(v.prefix, f"{system}|{self.blind(code)}")]
            return [v]
        if not raw:
            return [v]
        # No system: the value may be protected under some system, or a clear one under another.
        return [v, FilterValue(v.prefix, self.blind(raw))]


def redact_query(protector: FieldProtector | None, query: str | None) -> str | None:
    """A query string with the values of protected parameters blinded, for logs and the audit trail."""
    if not protector or not query:
        return query
    out = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.split(":")[0] in protector.search_params and value:
            value = ",".join(_redact_value(protector, v) for v in value.split(","))
        out.append((name, value))
    return urlencode(out, safe="|:#,/")


def _redact_value(protector: FieldProtector, value: str) -> str:
    if "|" in value:
        system, code = value.split("|", 1)
        return f"{system}|{protector.blind(code)}" if code else value
    return protector.blind(value)


def _replace(node: Any, secrets: list[tuple[str, str]]) -> Any:
    if isinstance(node, str):
        for clear, blind in secrets:
            if clear in node:
                node = node.replace(clear, blind)
        return node
    if isinstance(node, list):
        return [_replace(x, secrets) for x in node]
    if isinstance(node, dict):
        return {k: _replace(v, secrets) for k, v in node.items()}
    return node


def rotate_field_key(repo: Any, protector: FieldProtector, new_cipher: FieldCipher) -> int:
    """Re-encrypt every stored protected value under new_cipher (which keeps the old keys to read with).

    The blind-index key is not changed by this (searches keep working while it runs). Returns how many
    documents were rewritten. Safe to rerun: documents already under the new key are rewritten unchanged.
    """
    protector.cipher = new_cipher
    count = 0
    for rtype in sorted(repo.resource_types):
        for col in (repo.current(rtype), repo.history_col(rtype)):
            for doc in col.find({}, {"_id": 1, "res": 1}):
                new = protector.reencrypt(doc)
                if new is not doc and new["res"] != doc["res"]:
                    col.update_one({"_id": doc["_id"]}, {"$set": {"res": new["res"]}})
                    count += 1
    return count
