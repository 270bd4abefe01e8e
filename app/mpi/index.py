"""The master patient index store: identifier claims, name postings, resident lookups.

- `mpi_claims`: `_id` = blind index of "<system>|<normalised value>" (hex SM3-HMAC under the platform's
  blind-index key) -> {p: patient id}. One claim per identifier, so an identifier belongs to one Patient;
  no identifier is stored in clear. A claim is written under the lease "mpi|<claim key>" before the Patient
  version that carries the identifier, and it names the id that version will have; a claim whose Patient does
  not exist (its write failed) is free to take for the next holder of the lease, so a crash never leaves a
  half-registered resident.
- `mpi_names`: `_id` = a pinyin name key (app.mpi.matching.name_keys), and the key + "|" + birth year ->
  {ids: [patient ids]}: the candidates of Patient/$match without scanning.

Only `_id` lookups: FerretDB v1 answers nothing else from an index (app/store/keys.py).
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pymongo import DeleteOne, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.core.errors import FhirError, Issue
from app.core.ids import replaced_by
from app.keyring import Keyring
from app.mpi.identifiers import IdentifierInvalid, IdentifierRegistry
from app.mpi.matching import name_keys
from app.store.database import insert_new
from app.store.keys import KeyIndex, identifier_key
from app.store.repository import Repository

MAX_LINK_HOPS = 5
BULK_CHUNK = 50  # FerretDB v1.24 stops answering on one bulk update of ~100 existing documents
MAX_POSTING = 500  # candidates taken from one name posting


@dataclass(frozen=True)
class ClaimEntry:
    system: str
    value: str
    key: str  # blind index of "system|value"
    master: bool  # a master document (keys the resident)
    lifelong: bool


class MasterIndex:
    def __init__(self, repo: Repository, registry: IdentifierRegistry, keyring: Keyring) -> None:
        self.repo = repo
        self.registry = registry
        self.keyring = keyring
        self.claims: Collection = repo.db["mpi_claims"]
        self.names: Collection = repo.db["mpi_names"]
        self.name_lists = KeyIndex(self.names)
        self._master = set(registry.master_systems())

    # -- identifiers -----------------------------------------------------------------------------------

    def claim_key(self, system: str, value: str) -> str:
        return self.keyring.blind(f"{system}|{value}")

    def entries(self, resource: dict[str, Any] | None) -> list[ClaimEntry]:
        """The claimable identifiers of a Patient: every identifier of a known system (values as stored,
        i.e. already normalised on write) except the server-issued card IDs."""
        out: dict[str, ClaimEntry] = {}
        for ident in (resource or {}).get("identifier") or []:
            if not isinstance(ident, dict):
                continue
            system, value = ident.get("system"), ident.get("value")
            if not isinstance(system, str) or not isinstance(value, str) or not value:
                continue
            doc = self.registry.document_for(system)
            if doc is None or doc.server_issued:  # card IDs are unique by derivation: found via _keys
                continue
            key = self.claim_key(system, value)
            out[key] = ClaimEntry(system, value, key, system in self._master, doc.lifelong)
        return list(out.values())

    def normalise(self, system: str, value: str) -> str:
        """The stored form of a value (IdentifierInvalid when it cannot be one of that system)."""
        return self.registry.validate(system, value, allow_legacy=True).value

    def owners(self, keys: Iterable[str]) -> dict[str, str]:
        """claim key -> live patient id (dangling claims left out; merged patients followed)."""
        out = {}
        for key in keys:
            claim = self.claims.find_one({"_id": key})
            if claim is None:
                continue
            doc = self.resolve(claim["p"])
            if doc is not None:
                out[key] = doc["_id"]
        return out

    def resolve(self, pid: str) -> dict[str, Any] | None:
        """The live Patient document of pid, following replaced-by links of merged records."""
        for _ in range(MAX_LINK_HOPS):
            doc = self.repo.get_doc("Patient", pid)
            if doc is None or doc.get("del"):
                return None
            target = replaced_by(doc["res"])
            if target is None:
                return doc
            pid = target
        return None

    def find(self, system: str, value: str) -> dict[str, Any] | None:
        """The live Patient holding this identifier, or None (also for a value its system can never have)."""
        try:
            value = self.normalise(system, value)
        except IdentifierInvalid:
            return None
        doc = self.registry.document_for(system)
        if doc is not None and doc.server_issued:
            for pid in self.repo.keys.lookup(identifier_key("Patient", f"{system}|{value}")):
                found = self.resolve(pid)
                if found is not None:
                    return found
            return None
        claim = self.claims.find_one({"_id": self.claim_key(system, value)})
        return self.resolve(claim["p"]) if claim else None

    def claim_new(self, keys: Iterable[str], pid: str) -> set[str]:
        """Insert a claim naming pid for every key that has none, in one round trip (the caller holds the
        keys' leases); returns the keys that had a claim already, which are left as they were."""
        return self.claim_new_many(dict.fromkeys(keys, pid))

    def claim_new_many(self, claims: dict[str, str]) -> set[str]:
        """`claim_new` for a batch (claim key -> patient id; the caller holds the keys' leases): one insert_many
        of every claim; returns the keys that had a claim already, which are left as they were."""
        ordered = sorted(claims)
        return {ordered[i] for i in insert_new(self.claims, [{"_id": k, "p": claims[k]} for k in ordered])}

    def drop_fresh_claims(self, keys: Iterable[str]) -> None:
        """Drop claims this caller has just inserted and still holds the leases of (nobody else can have
        changed them), in one command of `_id` deletes."""
        ordered = sorted(set(keys))
        if ordered:
            self.claims.bulk_write([DeleteOne({"_id": k}) for k in ordered], ordered=False)

    def write_claims(self, keys: Iterable[str], pid: str) -> None:
        bulk(self.claims, [({"_id": k}, {"$set": {"p": pid}}, True) for k in sorted(set(keys))])

    def drop_claims(self, keys: Iterable[str], pid: str) -> None:
        for key in sorted(set(keys)):
            self.claims.delete_one({"_id": key, "p": pid})

    # -- names -----------------------------------------------------------------------------------------

    @staticmethod
    def name_postings(resource: dict[str, Any] | None) -> set[str]:
        if not resource:
            return set()
        keys = set(name_keys(resource))
        year = resource.get("birthDate")
        out = set(keys)
        if isinstance(year, str) and len(year) >= 4:
            out |= {f"{k}|{year[:4]}" for k in keys}
        return out

    def index_names(self, pid: str, resource: dict[str, Any] | None, previous: dict[str, Any] | None) -> None:
        new, old = self.name_postings(resource), self.name_postings(previous)
        self.name_lists.change(pid, new - old, old - new)

    def add_names_many(self, postings: dict[str, list[str]]) -> None:
        """The name postings of a batch of new residents (name key -> patient ids): one insert of the lists
        that are new, updates of the others."""
        self.name_lists.add_new_many(postings)

    def name_candidates(self, query: dict[str, Any]) -> list[str]:
        keys = set(name_keys(query))
        year = query.get("birthDate")
        if isinstance(year, str) and len(year) >= 4:
            keys = {f"{k}|{year[:4]}" for k in keys}
        out: list[str] = []
        for key in sorted(keys):
            out.extend(self.name_lists.lookup(key, limit=MAX_POSTING))
        return list(dict.fromkeys(out))


Update = tuple[dict[str, Any], dict[str, Any], bool]  # filter, update, upsert


def bulk(col: Collection, ops: list[Update]) -> None:
    """Updates in bulk_write chunks small enough for FerretDB v1 (larger update batches hang it). FerretDB
    also answers concurrent upserts of one _id with a malformed bulk reply or a duplicate key (MongoDB retries
    those itself): such a chunk is redone one update at a time, retrying the duplicates."""
    for i in range(0, len(ops), BULK_CHUNK):
        chunk = ops[i: i + BULK_CHUNK]
        try:
            col.bulk_write([UpdateOne(f, u, upsert=up) for f, u, up in chunk], ordered=False)
        except (KeyError, PyMongoError):
            for f, u, up in chunk:
                for attempt in range(3):
                    try:
                        col.update_one(f, u, upsert=up)
                        break
                    except DuplicateKeyError:
                        if attempt == 2:
                            raise


# -- comparing and merging residents ---------------------------------------------------------------------

_NAME_NOISE = re.compile(r"[\s·•.,，\-']+")


def _norm(text: str) -> str:
    return _NAME_NOISE.sub("", unicodedata.normalize("NFKC", text)).lower()


def name_forms(resource: dict[str, Any]) -> set[str]:
    """Normalised spellings of a Patient's names: text, family+given, and (Latin names) sorted tokens.
    Chinese names compare by their characters only: 张伟 and 章伟 are different names."""
    out = set()
    for name in resource.get("name") or []:
        if not isinstance(name, dict):
            continue
        parts = []
        if isinstance(name.get("text"), str) and name["text"].strip():
            parts.append(name["text"])
        family = name["family"] if isinstance(name.get("family"), str) else ""
        given = [str(g) for g in name.get("given") or [] if isinstance(g, str)]
        if family or given:
            parts.append(str(family) + " " + " ".join(given))
            parts.append(" ".join(given) + " " + family)
        for text in parts:
            out.add(_norm(text))
            tokens = [_norm(t) for t in re.split(r"[\s,，]+", text) if t.strip()]
            if len(tokens) > 1:
                out.add(" ".join(sorted(tokens)))
    out.discard("")
    return out


def check_same_resident(existing: dict[str, Any], incoming: dict[str, Any], entries_in: list[ClaimEntry],
                        entries_ex: list[ClaimEntry], pid: str) -> None:
    """409 when a registration that matched `existing` by an identifier contradicts it. The refusal says what
    differs, never what the record holds: the caller may be a client the disclosure gate would not show the
    record to (a hospital of another province, a resident's app), and the identifier is all it had to know."""
    issues = []
    a, b = name_forms(existing), name_forms(incoming)
    if a and b and not a & b:
        issues.append(Issue(f"the name {_display(incoming)} contradicts the name of the registered resident "
                            f"Patient/{pid}", "conflict", expression=["Patient.name"]))
    bd_a, bd_b = existing.get("birthDate"), incoming.get("birthDate")
    if isinstance(bd_a, str) and isinstance(bd_b, str):
        n = min(len(bd_a), len(bd_b), 10)
        if bd_a[:n] != bd_b[:n]:
            issues.append(Issue(f"birthDate {bd_b} contradicts the birth date of Patient/{pid}", "conflict",
                                expression=["Patient.birthDate"]))
    g_a, g_b = existing.get("gender"), incoming.get("gender")
    if g_a in ("male", "female") and g_b in ("male", "female") and g_a != g_b:
        issues.append(Issue(f"gender {g_b} contradicts the gender of Patient/{pid}", "conflict",
                            expression=["Patient.gender"]))
    held: dict[str, set[str]] = {}
    for e in entries_ex:
        if e.lifelong:
            held.setdefault(e.system, set()).add(e.value)
    for e in entries_in:
        if e.lifelong and e.system in held and e.value not in held[e.system]:
            issues.append(Issue(f"identifier {e.system}|{e.value} differs from the one Patient/{pid} holds in "
                                "that system: the other identifiers of this submission belong to another "
                                "resident", "conflict", expression=[_ident_path(incoming, e)]))
    if issues:
        raise FhirError(409, issues[0].diagnostics, issues=issues)


def _display(resource: dict[str, Any]) -> str:
    for name in resource.get("name") or []:
        if isinstance(name, dict):
            if name.get("text"):
                return str(name["text"])
            return " ".join([str(name.get("family") or ""), *[str(g) for g in name.get("given") or []]]).strip()
    return "(no name)"


def _ident_path(resource: dict[str, Any], entry: ClaimEntry) -> str:
    for i, ident in enumerate(resource.get("identifier") or []):
        if isinstance(ident, dict) and ident.get("system") == entry.system and ident.get("value") == entry.value:
            return f"Patient.identifier[{i}]"
    return "Patient.identifier"


def merge_into(existing: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """The existing resident's record with what a new registration adds: its identifiers, phones and any
    element the record lacks. Nothing already recorded is overwritten."""
    out = copy.deepcopy(existing)
    have = {(i.get("system"), i.get("value")) for i in out.get("identifier") or [] if isinstance(i, dict)}
    for ident in incoming.get("identifier") or []:
        if isinstance(ident, dict) and (ident.get("system"), ident.get("value")) not in have:
            out.setdefault("identifier", []).append(copy.deepcopy(ident))
            have.add((ident.get("system"), ident.get("value")))
    phones = {(t.get("system"), t.get("value")) for t in out.get("telecom") or [] if isinstance(t, dict)}
    for tel in incoming.get("telecom") or []:
        if isinstance(tel, dict) and (tel.get("system"), tel.get("value")) not in phones:
            out.setdefault("telecom", []).append(copy.deepcopy(tel))
    for key, value in incoming.items():
        if key not in out and key not in ("id", "meta", "text") and not key.startswith("_ehc"):
            out[key] = copy.deepcopy(value)
    return out


def adds_nothing(existing: dict[str, Any], incoming: dict[str, Any]) -> bool:
    """True when merge_into would leave the record as it is."""
    return merge_into(existing, incoming) == existing
