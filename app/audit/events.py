"""An AccessRecord as a FHIR R4 AuditEvent, shaped like IHE BALP (Basic Audit Log Patterns, RESTful
interactions): type `rest`, subtype the restful interaction, action C/R/U/D/E, the client, user and
organization as agents (the requestor marked), this node as source, and as entities the resources touched,
the query (base64), the patient (role 1, so that `AuditEvent?patient=` finds it) and the Consent relied on.

Pure: no Flask, no pymongo. The sealer builds events with it from the access records the writer stored.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from app.core.access import PROVINCE_SYSTEM, AccessRecord, Principal
from app.core.timeutil import to_instant

AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE_IP = "2"
CLIENT_SYSTEM = "urn:ehc:client"
ORG_SYSTEM = "urn:ehc:organization"
USER_SYSTEM = "urn:ehc:user"
NODE_SYSTEM = "urn:ehc:node"

_REF = re.compile(r"^(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_ENTITIES = 500  # a search page is at most max_count (500) resources

# interaction -> (restful-interaction code, action)
INTERACTIONS: dict[str, tuple[str, str]] = {
    "create": ("create", "C"),
    "read": ("read", "R"),
    "vread": ("vread", "R"),
    "update": ("update", "U"),
    "patch": ("patch", "U"),
    "delete": ("delete", "D"),
    "history": ("history", "R"),
    "history-instance": ("history-instance", "R"),
    "history-type": ("history-type", "R"),
    "history-system": ("history-system", "R"),
    "search": ("search-type", "E"),  # BALP Query: action E
    "search-type": ("search-type", "E"),
    "search-system": ("search-system", "E"),
    "capabilities": ("capabilities", "R"),
    "transaction": ("transaction", "E"),
    "batch": ("batch", "E"),
    "operation": ("operation", "E"),
    "verify": ("operation", "E"),  # $ehc-verify
}


@dataclass(frozen=True)
class Node:
    """This server as the audit source."""

    province: str
    base_url: str | None = None

    @property
    def display(self) -> str:
        return self.base_url or f"ehc-fhir node {self.province}"


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def split_path(path: str | None) -> tuple[str | None, list[str]]:
    """(resource type, [id]) of a FHIR path relative to the base: "Patient/1/_history/2" -> ("Patient", ["1"])."""
    segs = [s for s in (path or "").strip("/").split("/") if s]
    if not segs or not segs[0][:1].isupper():
        return None, []
    if len(segs) > 1 and not segs[1].startswith(("$", "_")) and _ID.match(segs[1]):
        return segs[0], [segs[1]]
    return segs[0], []


def interaction_for(method: str | None, path: str | None) -> str:
    """The restful interaction a request attempted, from its method and path (for refusals and recovery)."""
    method = (method or "GET").upper()
    segs = [s for s in (path or "").strip("/").split("/") if s]
    if any(s.startswith("$") for s in segs):
        return "operation"
    if segs and segs[-1] == "_search":
        return "search-system" if len(segs) == 1 else "search-type"
    if "_history" in segs:
        return "vread" if segs[-1] != "_history" and len(segs) == 4 else "history"
    if segs and segs[0] == "metadata":
        return "capabilities"
    rtype, ids = split_path(path)
    if method == "GET":
        return "read" if ids else ("search-type" if rtype else "search-system")
    if method == "POST":
        return "create" if rtype else "transaction"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete"
    return "operation"


def outcome_for(status: int) -> str:
    """AuditEvent.outcome for an HTTP status: 0 success, 4 minor failure (refused), 8 serious failure."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def as_reference(value: str, default_type: str | None = None) -> str | None:
    """"Type/id" from a reference, an absolute URL or (with default_type) a bare id; None when neither."""
    m = _REF.match(value)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if default_type and _ID.match(value):
        return f"{default_type}/{value}"
    return None


def patient_refs(resource_type: str, resource: dict[str, Any] | None, rid: str | None = None) -> set[str]:
    """The patients a resource is about: itself for a Patient, else its top-level references to a Patient
    (subject, patient, beneficiary ...)."""
    if resource_type == "Patient":
        pid = rid or (resource or {}).get("id")
        return {f"Patient/{pid}"} if pid else set()
    found: set[str] = set()
    for value in (resource or {}).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and isinstance(item.get("reference"), str):
                ref = as_reference(item["reference"])
                if ref and ref.startswith("Patient/"):
                    found.add(ref)
    return found


def query_patients(resource_type: str | None, query: str | None) -> set[str]:
    """Patients a search names: patient=, subject=Patient/..., and _id for a Patient search."""
    found: set[str] = set()
    for key, value in parse_qsl(query or "", keep_blank_values=False):
        name, _, modifier = key.partition(":")
        for v in value.split(","):
            v = v.strip()
            ref = None
            if name == "patient" or (name in ("subject", "beneficiary") and modifier in ("Patient", "")
                                     and "/" not in v):
                ref = as_reference(v, "Patient")  # a bare id: most often a Patient's, and named so it is seen
            elif name in ("subject", "beneficiary"):
                ref = as_reference(v)
            elif name == "_id" and resource_type == "Patient":
                ref = as_reference(v, "Patient")
            if ref and ref.startswith("Patient/"):
                found.add(ref)
    return found


def resource_refs(record: AccessRecord) -> list[str]:
    refs: list[str] = []
    for rid in record.resource_ids:
        ref = as_reference(rid, record.resource_type)
        if ref and ref not in refs:
            refs.append(ref)
    return refs[:MAX_ENTITIES]


def record_patients(record: AccessRecord, extra: Iterable[str] = ()) -> set[str]:
    """Every patient an access is known to be about, without looking anything up."""
    found = {r for r in (as_reference(p, "Patient") for p in [*record.patient_ids, *extra]) if r}
    principal = record.principal
    if principal and principal.patient:
        ref = as_reference(principal.patient, "Patient")
        if ref:
            found.add(ref)
    found.update(r for r in resource_refs(record) if r.startswith("Patient/"))
    found.update(query_patients(record.resource_type, record.query))
    return {p for p in found if p.startswith("Patient/")}


def purpose_of_use(principal: Principal | None) -> str | None:
    if principal is None:
        return None
    if principal.break_glass:
        return "ETREAT"
    if principal.purpose_of_use:
        return principal.purpose_of_use
    if principal.user and principal.user.split("/")[-2:-1] in (["Patient"], ["RelatedPerson"]):
        return "PATRQT"  # a resident (or a relative bound to them) acting for themselves
    return "TREAT"


def _agents(principal: Principal | None, remote_addr: str | None, node: Node,
            purpose: str | None) -> list[dict[str, Any]]:
    network = {"address": remote_addr, "type": NETWORK_TYPE_IP} if remote_addr else None
    pou = [{"coding": [coding(ACT_REASON, purpose)]}] if purpose else None
    policy = [principal.token_id] if principal and principal.token_id else None
    has_user = bool(principal and principal.user)
    client: dict[str, Any] = {
        "type": {"coding": [coding(DCM, "110153", "Source Role ID")]},
        "requestor": not has_user,
    }
    if principal and principal.client_id:
        client["who"] = {"identifier": {"system": CLIENT_SYSTEM, "value": principal.client_id}}
        client["name"] = principal.client_id
    else:
        client["who"] = {"display": "unidentified client"}
    if network:
        client["network"] = network
    if not has_user:
        if policy:
            client["policy"] = policy
        if pou:
            client["purposeOfUse"] = pou
    agents = [client]
    if principal and principal.user:
        ref = as_reference(principal.user)
        user: dict[str, Any] = {
            "type": {"coding": [coding(SECURITY_ROLE, "humanuser", "human user")]},
            "who": {"reference": ref} if ref else {"identifier": {"system": USER_SYSTEM, "value": principal.user}},
            "requestor": True,
        }
        if policy:
            user["policy"] = policy
        if pou:
            user["purposeOfUse"] = pou
        agents.append(user)
    if principal and principal.organization:
        org = principal.organization
        agents.append({
            "type": {"text": "client organization"},
            "who": {"identifier": {"system": ORG_SYSTEM, "value": org}, "display": org},
            "requestor": False,
        })
    if principal and principal.province:  # from where: a resident reading their trail tells provinces apart
        agents.append({
            "type": {"text": "client province"},
            "who": {"identifier": {"system": PROVINCE_SYSTEM, "value": principal.province}},
            "requestor": False,
        })
    agents.append({
        "type": {"coding": [coding(DCM, "110152", "Destination Role ID")]},
        "who": {"identifier": {"system": NODE_SYSTEM, "value": node.province}, "display": node.display},
        "requestor": False,
    })
    return agents


def _entities(record: AccessRecord, patients: set[str]) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = [
        {"what": {"reference": p}, "type": coding(ENTITY_TYPE, "1", "Person"),
         "role": coding(OBJECT_ROLE, "1", "Patient")}
        for p in sorted(patients)
    ]
    for ref in resource_refs(record):
        if ref not in patients:
            entities.append({"what": {"reference": ref}, "type": coding(ENTITY_TYPE, "2", "System Object"),
                             "role": coding(OBJECT_ROLE, "4", "Domain Resource")})
    if record.query or record.withheld:
        query: dict[str, Any] = {"type": coding(ENTITY_TYPE, "2", "System Object"),
                                 "role": coding(OBJECT_ROLE, "24", "Query")}
        if record.query:
            query["query"] = base64.b64encode(record.query.encode("utf-8")).decode("ascii")
            query["description"] = record.query[:1000]
        if record.withheld:
            # Results left out for want of consent: counted, never named.
            query["detail"] = [{"type": "withheld", "valueString": str(record.withheld)}]
        entities.append(query)
    if record.consent:
        entities.append({"what": {"reference": as_reference(record.consent, "Consent") or record.consent},
                         "type": coding(ENTITY_TYPE, "2", "System Object"),
                         "role": coding(OBJECT_ROLE, "13", "Security Resource"),
                         "description": "consent relied on for this access"})
    return entities


def build_audit_event(record: AccessRecord, *, event_id: str, recorded: datetime, node: Node,
                      method: str | None = None, path: str | None = None,
                      patients: Iterable[str] = ()) -> dict[str, Any]:
    """The AuditEvent for one access. method/path (the HTTP request) name the interaction of a refusal."""
    interaction = record.interaction
    if interaction in ("refused", "unknown") or interaction not in INTERACTIONS:
        interaction = interaction_for(method, path) if method else "operation"
    code, action = INTERACTIONS[interaction]
    if record.interaction == "verify":
        action = "E"
    purpose = purpose_of_use(record.principal)
    desc = record.description or (f"HTTP {record.status}" if record.status and record.outcome != "0" else None)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "type": coding(AUDIT_TYPE, "rest", "Restful Operation"),
        "subtype": [coding(RESTFUL, code)],
        "action": action,
        "recorded": to_instant(recorded),
        "outcome": record.outcome if record.outcome in ("0", "4", "8", "12") else "8",
    }
    if desc:
        event["outcomeDesc"] = desc[:1000]
    if purpose:
        event["purposeOfEvent"] = [{"coding": [coding(ACT_REASON, purpose)]}]
    event["agent"] = _agents(record.principal, record.remote_addr, node, purpose)
    event["source"] = {
        "site": node.province,
        "observer": {"identifier": {"system": NODE_SYSTEM, "value": node.province}, "display": node.display},
        "type": [coding(SOURCE_TYPE, "4", "Application Server")],
    }
    entities = _entities(record, record_patients(record, patients))
    if entities:
        event["entity"] = entities
    return event


def unresolved_refs(event: dict[str, Any]) -> list[str]:
    """The resources of an event with no patient: their patients are looked up later, off the request path."""
    whats = [e["what"]["reference"] for e in event.get("entity", []) if "what" in e]
    if any(w.startswith("Patient/") for w in whats):
        return []
    return [w for w in whats if not w.startswith(("Consent/", "AuditEvent/"))]


def add_patients(event: dict[str, Any], patients: Iterable[str]) -> dict[str, Any]:
    """The event with patient entities added (in front, sorted), for what unresolved_refs left open."""
    known = {e["what"]["reference"] for e in event.get("entity", []) if "what" in e}
    new = [{"what": {"reference": p}, "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient")} for p in sorted(set(patients) - known)]
    if new:
        event = dict(event)
        event["entity"] = new + list(event.get("entity", []))
    return event


_PATIENT_REF = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})")


def as_seen_by(event: dict[str, Any], patient: str) -> dict[str, Any]:
    """The event as a reader confined to one patient's records sees it (a resident, a resident's app).

    One access (a search, a batch) often concerns several residents, and its one event names them all, their
    records and the query. Each of them may read that it happened, by whom, when and how; none may read the
    others: their Patient entities are left out, the other references keep only their type (which of them
    are the reader's the event does not say), and a query or outcome text naming another patient is dropped.
    A text names another patient when it holds the id of one of the event's other patients, or any
    `Patient/<id>` but the reader's: the event may come without its entities (`_elements`), and a long query is
    cut in the description but whole in `query` (base64), which is read too.
    IHE BALP reaches the same end with one event per patient; this keeps one event per access."""
    me = f"Patient/{patient}"
    entities = event.get("entity") or []
    other_ids = {str(e["what"]["reference"]).rsplit("/", 1)[-1] for e in entities
                 if _role(e) == "1" and (e.get("what") or {}).get("reference") not in (None, me)}

    def names_another(text: Any) -> bool:
        return isinstance(text, str) and (any(pid in text for pid in other_ids)
                                          or any(pid != patient for pid in _PATIENT_REF.findall(text)))

    def query_text(entity: dict[str, Any]) -> str | None:
        try:
            return base64.b64decode(str(entity.get("query") or "")).decode("utf-8", "replace") or None
        except ValueError:
            return "unreadable"  # not the server's own: shown to nobody confined

    shown: list[dict[str, Any]] = []
    changed = False
    for entity in entities:
        ref = (entity.get("what") or {}).get("reference")
        if _role(entity) == "1" and ref != me:
            changed = True
            continue
        seen = dict(entity)
        if isinstance(ref, str) and ref != me and (other_ids or ref.startswith("Patient/")):
            seen["what"] = {"type": ref.split("/")[-2]} if "/" in ref else {}
        if names_another(seen.get("description")) or (seen.get("query") and names_another(query_text(seen))):
            seen.pop("description", None)
            seen.pop("query", None)
        changed = changed or seen != entity
        shown.append(seen)
    out = {**event, "entity": shown} if changed else dict(event)
    if "entity" not in event:
        out.pop("entity", None)
    if names_another(out.get("outcomeDesc")):
        out.pop("outcomeDesc")
    return out if out != event else event


def _role(entity: dict[str, Any]) -> str | None:
    role = entity.get("role")
    return role.get("code") if isinstance(role, dict) else None
