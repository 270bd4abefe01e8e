"""Storing audit events on the request path: one small insert, no counter, no read-modify-write.

FerretDB v1 has no atomic read-modify-write (a findAndModify `$inc` from parallel connections loses updates
and hands out the same number twice), and SQLite behind it runs one write at a time; its one reliable
primitive is a unique `_id` insert. So writers neither number events nor touch the AuditEvent collection:
- `write(record)`: one insert into `_audit_pending` of `{_id, at, kind: "event", res, intent, todo}`;
- `reserve(...)`: for a request that changes data, one insert of its intent `{_id, at, kind: "intent",
  method, path, query, remote_addr, principal}` before the operation runs; its event names the intent.
The sealer (app.audit.sealer), alone under a lease, numbers pending events, stores them as AuditEvent
resources (Repository.build_doc: search index values included) and chains them. An intent left without its
event by a process that died is sealed as an event with outcome 8. Writing straight to collections, never
through Repository.create, means no storage events and no access records: auditing never audits itself.
Queries and error texts are stored with ID and phone numbers blinded (as the search index holds them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pymongo.database import Database

from app.audit.chain import PENDING
from app.audit.events import MAX_ENTITIES, Node, build_audit_event, unresolved_refs
from app.core.access import AccessRecord, Principal
from app.core.ids import new_id
from app.core.timeutil import utcnow
from app.store.repository import Repository

# ID numbers (15/18 chars), phone numbers (11 digits) and the like, wherever free text may echo them.
_LONG_NUMBER = re.compile(r"\d{10,}[\dXx]?")
PROTECTED_PARAMS = {"identifier": "identifier", "phone": "phone", "telecom": "telecom"}


class AuditWriter:
    def __init__(self, db: Database, repo: Repository, node: Node) -> None:
        self.repo = repo
        self.node = node
        self.pending = db[PENDING]

    # -- what must not reach the audit trail in clear (DESIGN §5: ID and phone numbers) --------------------

    def _blind(self, value: str) -> str:
        protector = self.repo.protector
        return protector.blind(value) if protector else "#redacted"

    def scrub(self, text: str | None) -> str | None:
        """Free text with long numbers replaced by their blind index (what the search index holds)."""
        return _LONG_NUMBER.sub(lambda m: self._blind(m.group()), text) if text else text

    def redact_query(self, query: str | None) -> str | None:
        """A query string with the values of protected parameters blinded, as the store blinds them."""
        if not query:
            return query
        protector = self.repo.protector
        params = protector.search_params if protector else PROTECTED_PARAMS
        out = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            kind = params.get(name.split(":")[0]) or ("identifier" if name == "sourceIdentifier" else None)
            if kind:
                value = ",".join(self._blind_value(kind, v) for v in value.split(","))
            out.append((name, self.scrub(value) or ""))
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
        return value

    # -- writing ------------------------------------------------------------------------------------------

    def reserve(self, method: str | None, path: str | None, query: str | None, remote_addr: str | None,
                principal: Principal | None = None) -> str:
        """Leave the intent of an event to come (before a write runs); returns the intent id."""
        iid = new_id()
        marker: dict[str, Any] = {"_id": iid, "at": utcnow(), "kind": "intent", "method": method, "path": path,
                                  "query": self.redact_query(query), "remote_addr": remote_addr}
        if principal is not None:
            marker["principal"] = {k: v for k, v in asdict(principal).items() if k != "extra"}
        self.pending.insert_one(marker)
        return iid

    def pending_event(self, record: AccessRecord, event_id: str, *, method: str | None = None,
                      path: str | None = None, patients: Iterable[str] = (),
                      intent_id: str | None = None) -> dict[str, Any]:
        now = utcnow()
        record = replace(record, query=self.redact_query(record.query), description=self.scrub(record.description))
        event = build_audit_event(record, event_id=event_id, recorded=now, node=self.node, method=method,
                                  path=path, patients=patients)
        doc: dict[str, Any] = {"_id": event_id, "at": now, "kind": "event", "prov": self.node.province,
                               "res": event}
        if intent_id:
            doc["intent"] = intent_id
        todo = unresolved_refs(event)
        if todo:
            doc["todo"] = todo[:MAX_ENTITIES]  # the sealer adds these resources' patients
        return doc

    def write(self, record: AccessRecord, *, intent_id: str | None = None, method: str | None = None,
              path: str | None = None, patients: Iterable[str] = ()) -> str:
        """Store the event for one access (one insert); returns its id. Raises when the database refuses
        it: an access that cannot be audited must not be answered as if it were."""
        eid = new_id()
        self.pending.insert_one(self.pending_event(record, eid, method=method, path=path, patients=patients,
                                                   intent_id=intent_id))
        return eid
