"""Storing audit events on the request path: no counter, no read-modify-write, and no insert of its own.

FerretDB v1 has no atomic read-modify-write (a findAndModify `$inc` from parallel connections loses updates
and hands out the same number twice), and SQLite behind it runs one write at a time; its one reliable
primitive is a unique `_id` insert. So writers neither number events nor touch the AuditEvent collection:
- `write(record)`: the event `{_id, at, kind: "event", prov, rec, method, path, patients, intent}` (`rec`: the
  access record, compact; the sealer builds the AuditEvent from it);
- `reserve(...)`: for a request that changes data, its intent `{_id, at, kind: "intent", method, path, query,
  remote_addr, principal}`, stored before the operation runs; its event names the intent.
Both are handed to the group committer (app.audit.commit): the records of concurrent requests are made durable
together (in the node's spool, or one insert), and each call returns only when its record is durable (or raises
AuditWriteError). They reach `_audit_pending` in batches (app.audit.pending).
The sealer (app.audit.sealer), alone under a lease, numbers pending events, stores them as AuditEvent
resources (Repository.build_doc: search index values included) and chains them. An intent left without its
event by a process that died is sealed as an event with outcome 8. Writing straight to collections, never
through Repository.create, means no storage events and no access records: auditing never audits itself.

Record ids sort by time (`pending_id`, a UUIDv7: 48-bit milliseconds, then a per-process counter, then random
bits), so that the sealer takes the oldest first. The event of a write is named after its intent
(`event_id_for`), so that the sealer can tell an intent whose event came from one whose process died.

Queries and error texts are stored with ID and phone numbers blinded (as the search index holds them):
values of protected parameters wholesale, and elsewhere any run of at least ten digits written with or
without spaces, dashes, dots, brackets or a +86 prefix (an ID number's final X included), normalised first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pymongo.database import Database

from app.audit.chain import PENDING
from app.audit.commit import GroupCommitter
from app.audit.events import Node, build_audit_event, query_patients
from app.audit.pending import pending_id
from app.core.access import AccessRecord, Principal
from app.core.timeutil import utcnow
from app.store.repository import Repository

# A number: digits, with at most two separators (spaces, dashes, dots, brackets, full-width forms) between
# digits, an optional +/00 international prefix, and an optional final X (ID numbers). Ten digits or more
# are scrubbed: mobile (11) and fixed-line (10-12) phone numbers, ID numbers (15 and 18), card numbers.
_SEP = r"[\s\-.()\u2010-\u2015\u2212\u3000\uff08\uff09\uff0d\uff0e]"
_NUMBER = re.compile(rf"(?<!\d){_SEP}{{0,2}}(?:[+\uff0b]\s?)?{_SEP}{{0,2}}\d(?:{_SEP}{{0,2}}\d)+(?:{_SEP}?[Xx])?(?!\d)")
# Left as they are: UUIDs (resource ids; only a plain run of digits inside one is scrubbed) and blind indexes.
_KEEP = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|#[0-9a-f]{64}")
_PLAIN = re.compile(r"\d{10,}[\dXx]?")  # inside ids: only unformatted runs, as before
MIN_DIGITS = 10
PROTECTED_PARAMS = {"identifier": "identifier", "phone": "phone", "telecom": "telecom"}


def normalise_number(text: str) -> str | None:
    """The digits of a number as written (plus a final X), without a +86/0086 prefix before a mobile
    number; None when it has fewer than ten digits."""
    digits = "".join(str(unicodedata.digit(c)) for c in text if c.isdigit())
    if len(digits) < MIN_DIGITS:
        return None
    if text.rstrip()[-1:] in ("X", "x"):
        digits += "X"
    for prefix in ("0086", "86"):
        rest = digits[len(prefix):]
        if digits.startswith(prefix) and len(rest) == 11 and rest.startswith("1"):
            return rest
    return digits


def scrub_numbers(text: str | None, blind: Callable[[str], str]) -> str | None:
    """Text with every number of ten digits or more, in any format, replaced by blind(normalised number).
    UUIDs (resource ids) and blind indexes stay readable; a plain run of digits inside a UUID is scrubbed."""
    if not text:
        return text

    def one(m: re.Match[str]) -> str:
        number = normalise_number(m.group())
        if number is None:
            return m.group()
        lead = m.group()[: len(m.group()) - len(m.group().lstrip())]  # a leading space (a "+" decoded) stays
        return lead + blind(number)

    out, at = [], 0
    for m in _KEEP.finditer(text):
        out.append(_NUMBER.sub(one, text[at:m.start()]))
        keep = m.group()
        out.append(keep if keep.startswith("#") else _PLAIN.sub(lambda p: blind(p.group().upper()), keep))
        at = m.end()
    out.append(_NUMBER.sub(one, text[at:]))
    return "".join(out)


_RECORD_FIELDS = tuple(f.name for f in fields(AccessRecord))  # in declaration order, as asdict gave them
_REQUIRED_FIELDS = {f.name for f in fields(AccessRecord) if f.default is MISSING and f.default_factory is MISSING}
_PRINCIPAL_FIELDS = tuple(f.name for f in fields(Principal) if f.name not in ("extra", "scopes", "issued_at"))


def record_doc(record: AccessRecord) -> dict[str, Any]:
    """An AccessRecord as a compact document (no empty values; the principal without scopes and extras).
    Pending records are a fifth the size of the AuditEvent they make, and FerretDB's cost of inserting,
    reading and deleting a document grows with its size."""
    # Field by field, not dataclasses.asdict: that deep-copies the principal's scopes and extras only to drop them.
    out = {k: list(v) if isinstance(v, list) else v for k in _RECORD_FIELDS if k != "principal"
           and (v := getattr(record, k)) not in (None, [], {})}
    if record.principal is not None:
        out["principal"] = principal_doc(record.principal)
    return out


def principal_doc(principal: Principal) -> dict[str, Any]:
    return {k: v for k in _PRINCIPAL_FIELDS if (v := getattr(principal, k)) not in (None, [], {})}


def principal_from(doc: Any) -> Principal | None:
    if not isinstance(doc, dict):
        return None
    return Principal(**{k: v for k, v in doc.items() if k in _PRINCIPAL_FIELDS})


def record_from(doc: dict[str, Any]) -> AccessRecord:
    """The AccessRecord of record_doc (fields this version does not know are left out)."""
    values = {k: v for k, v in doc.items() if k in _RECORD_FIELDS and k != "principal"}
    values["principal"] = principal_from(doc.get("principal"))
    for name in _REQUIRED_FIELDS - values.keys():  # record_doc leaves None out, also of required fields
        values[name] = None
    return AccessRecord(**values)


def event_id_for(intent_id: str) -> str:
    """The id of the event of a write whose intent is intent_id."""
    return f"{intent_id}.e"


class AuditWriter:
    def __init__(self, db: Database, repo: Repository, node: Node, committer: GroupCommitter | None = None) -> None:
        self.repo = repo
        self.node = node
        self.pending = db[PENDING]
        self.committer = committer or GroupCommitter(self.pending)

    def settle(self) -> None:
        """Before reading the trail: spooled records of this node shipped to pending (app.audit.spool)."""
        if self.committer.spool is not None:
            self.committer.spool.settle()

    # -- what must not reach the audit trail in clear (ID and phone numbers) --------------------

    def _blind(self, value: str) -> str:
        protector = self.repo.protector
        return protector.blind(value) if protector else "#redacted"

    def scrub(self, text: str | None) -> str | None:
        """Free text with phone and ID numbers (any format) replaced by the blind index of their normalised
        form (scrub_numbers)."""
        return scrub_numbers(text, self._blind)

    def redact_query(self, query: str | None) -> str | None:
        """A query string with the values of protected parameters blinded, as the store blinds them, and
        numbers elsewhere scrubbed."""
        if not query:
            return query
        protector = self.repo.protector
        params = protector.search_params if protector else PROTECTED_PARAMS
        out = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            kind = params.get(name.split(":")[0]) or ("identifier" if name == "sourceIdentifier" else None)
            if kind:
                value = ",".join(self._blind_value(kind, v) for v in value.split(","))
            else:
                value = self.scrub(value) or ""
            out.append((self.scrub(name) or "", value))
        return urlencode(out)

    def _blind_value(self, kind: str, value: str) -> str:
        protector = self.repo.protector
        if "|" not in value:
            return self._blind(value) if value else value
        system, code = value.split("|", 1)
        systems = (protector.identifier_systems if kind == "identifier" else protector.telecom_systems) \
            if protector else None
        if code and (systems is None or system in systems):
            return f"{system}|{self._blind(code)}"
        return self.scrub(value) or value

    # -- writing ------------------------------------------------------------------------------------------

    def intent_doc(self, method: str | None, path: str | None, query: str | None, remote_addr: str | None,
                   principal: Principal | None = None) -> dict[str, Any]:
        marker: dict[str, Any] = {"_id": pending_id(), "at": utcnow(), "kind": "intent", "method": method,
                                  "path": path, "query": self.redact_query(query), "remote_addr": remote_addr}
        if principal is not None:
            marker["principal"] = principal_doc(principal)
        return marker

    def reserve(self, method: str | None, path: str | None, query: str | None, remote_addr: str | None,
                principal: Principal | None = None) -> str:
        """Store the intent of an event to come (before a write runs; durable when this returns); returns
        the intent id. Raises AuditWriteError when the database refuses it."""
        marker = self.intent_doc(method, path, query, remote_addr, principal)
        self.committer.submit(marker, final=False)
        return str(marker["_id"])

    def pending_event(self, record: AccessRecord, event_id: str, *, method: str | None = None,
                      path: str | None = None, patients: Iterable[str] = (),
                      intent_id: str | None = None) -> dict[str, Any]:
        """The pending record of an event: the access itself, compact (its query and text scrubbed, the
        patients it names resolved), not the AuditEvent, which the sealer builds from it (`build_event`)."""
        # the patients a query names, read before the query is scrubbed
        patients = {*patients, *query_patients(record.resource_type, record.query)}
        record = replace(record, query=self.redact_query(record.query), description=self.scrub(record.description))
        doc: dict[str, Any] = {"_id": event_id, "at": utcnow(), "kind": "event", "prov": self.node.province,
                               "rec": record_doc(record)}
        for name, value in (("method", method), ("path", path), ("patients", sorted(patients)),
                            ("intent", intent_id)):
            if value:
                doc[name] = value
        return doc

    def build_event(self, pending: Mapping[str, Any]) -> dict[str, Any]:
        """The AuditEvent of a pending event record (as `pending_event` stored it; records stored whole by
        earlier versions are taken as they are)."""
        if "rec" not in pending:
            return dict(pending["res"])
        return build_audit_event(record_from(pending["rec"]), event_id=str(pending["_id"]), recorded=pending["at"],
                                 node=self.node, method=pending.get("method"), path=pending.get("path"),
                                 patients=pending.get("patients") or ())

    def write(self, record: AccessRecord, *, intent_id: str | None = None, method: str | None = None,
              path: str | None = None, patients: Iterable[str] = (), leaving: int | None = None) -> str:
        """Store the event for one access (durable when this returns); returns its id. Raises
        AuditWriteError when the database refuses it: an access that cannot be audited must not be answered
        as if it were. `leaving`: the committer token of a request (GroupCommitter.enter) of which this is
        the last record."""
        eid = event_id_for(intent_id) if intent_id else pending_id()
        self.committer.submit(self.pending_event(record, eid, method=method, path=path, patients=patients,
                                                 intent_id=intent_id), leaving=leaving)
        return eid
