"""Records kept at other provinces' nodes, reached the way any app reaches them: the FHIR API of this server,
with the resident's own token, a search that names the resident by ID number
(`<type>?patient.identifier=urn:oid:2.16.156.10011.1.3|<ID>`). This node forwards such a search through the
national node to the home nodes (app.federation.search); each home node decides under its own consent rules
(the resident's Consent there, for this province) and audits it; what comes back passes this node's disclosure
gate like any record. Each entry from another node carries the home-province extension; the search outcome
says how many records a province withheld, or that it could not be reached. Nothing here opens a path of its
own: without federation (no national node trusted) the portal shows local records only.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from app.portal.fhirclient import PortalApi

ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
HOME_PROVINCE = "https://ehc.example.cn/fhir/StructureDefinition/home-province"
# The record types the portal asks other provinces for (each one search, in parallel): what "My records" shows.
REMOTE_TYPES = ("Encounter", "Observation", "DocumentReference", "DiagnosticReport", "Condition",
                "MedicationRequest", "Procedure", "Immunization", "AllergyIntolerance")
_WITHHELD = re.compile(r"^(\d+) matching resource\(s\) withheld at province (\d+)")
_UNREACHABLE = re.compile(r"^(?:province (\d+) is unreachable|the national node \(province (00)\) is unreachable)")
_REFUSED = re.compile(r"^province (\d+) refused the query")


@dataclass
class ProvinceNote:
    province: str
    shown: int = 0
    withheld: int = 0
    unreachable: bool = False
    refused: bool = False


@dataclass
class RemoteRecords:
    resources: list[dict[str, Any]] = field(default_factory=list)  # each with "_province" added
    notes: dict[str, ProvinceNote] = field(default_factory=dict)
    asked: bool = False  # the federation was asked (this node trusts a national node, the resident has an ID)

    def note(self, province: str) -> ProvinceNote:
        return self.notes.setdefault(province, ProvinceNote(province))


def federated(svc: Any) -> bool:
    """Whether this node forwards searches to other provinces (a province node that trusts a national node)."""
    fed = svc.extensions.get("federation")
    return bool(fed is not None and not fed.national and fed.national_node() is not None)


def id_number(patient: dict[str, Any] | None) -> str | None:
    for ident in (patient or {}).get("identifier") or []:
        if ident.get("system") == ID_SYSTEM and ident.get("use") != "old" and ident.get("value"):
            return str(ident["value"])
    return None


def province_of(entry: dict[str, Any]) -> str | None:
    for ext in entry.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == HOME_PROVINCE and ext.get("valueCode"):
            return str(ext["valueCode"])
    return None


def search(api: PortalApi, token: str, number: str, rtype: str,
           extra: list[tuple[str, str]] | None = None, count: int = 100) -> dict[str, Any]:
    params = [("patient.identifier", f"{ID_SYSTEM}|{number}"), ("_count", str(count)), *(extra or [])]
    ans = api.fhir("GET", rtype, token, params)
    return ans.body if ans.ok and isinstance(ans.body, dict) else {}


def read_outcome(bundle: dict[str, Any], out: RemoteRecords) -> None:
    for entry in bundle.get("entry") or []:
        if (entry.get("search") or {}).get("mode") != "outcome":
            continue
        for issue in (entry.get("resource") or {}).get("issue") or []:
            text = str(issue.get("diagnostics") or "")
            if m := _WITHHELD.match(text):
                out.note(m.group(2)).withheld += int(m.group(1))
            elif m := _UNREACHABLE.match(text):
                out.note(m.group(1) or m.group(2)).unreachable = True
            elif m := _REFUSED.match(text):
                out.note(m.group(1)).refused = True


def fetch(api: PortalApi, token: str, number: str) -> RemoteRecords:
    """The resident's records at other provinces' nodes, with what each province withheld."""
    out = RemoteRecords(asked=True)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="ehc-portal-remote") as pool:
        bundles = list(pool.map(lambda rt: search(api, token, number, rt), REMOTE_TYPES))
    seen: set[str] = set()
    for bundle in bundles:
        read_outcome(bundle, out)
        for entry in bundle.get("entry") or []:
            province = province_of(entry)
            res = entry.get("resource")
            if province is None or not isinstance(res, dict) or (entry.get("search") or {}).get("mode") != "match":
                continue  # a record of this node (shown from $everything already)
            key = str(entry.get("fullUrl") or f"{res.get('resourceType')}/{res.get('id')}")
            if key in seen:
                continue
            seen.add(key)
            out.resources.append({**res, "_province": province})
            out.note(province).shown += 1
    return out


def document(api: PortalApi, token: str, number: str, doc_id: str) -> tuple[dict[str, Any] | None, str | None]:
    """One DocumentReference of another province (by the same federated search, narrowed by _id)."""
    bundle = search(api, token, number, "DocumentReference", [("_id", doc_id)])
    for entry in bundle.get("entry") or []:
        res = entry.get("resource") or {}
        province = province_of(entry)
        if province and res.get("resourceType") == "DocumentReference" and res.get("id") == doc_id:
            return res, province
    return None, None
