"""The cross-province part of a search: the home node's records, under the home node's consent decision.

A search at a province node that names a resident by ID number (`subject:Patient.identifier=
urn:oid:2.16.156.10011.1.3|<ID>`, `patient.identifier=...`, Patient `identifier=...`) is also sent, with a
signed requester assertion, to the national node, which forwards it to the nodes where the national index
knows that resident (app.federation.service). Each home node runs its ordinary search for the original
requester; its disclosure gate withholds what no consent covers. Here:

- remote_entries(req, svc, type, params) -> (entries, issues): the home nodes' entries, unchanged (fullUrl at
  the home node), and issues: how many were withheld at each province, or which province could not be reached
  (a warning; the answer comes within QUERY_TIMEOUT whatever the other nodes do);
- merge_remote(bundle, req, entries, issues) puts them into the local searchset: entries before the outcome,
  issues into it, the totals added, and paging links that carry the remote cursors (`_remote`): a page with a
  local `_cursor` continues both; a page with `_remote` and no `_cursor` holds remote entries only (the local
  pages are over); `_remote=done`: the remote pages are over.

Each remote entry carries the extension HOME_PROVINCE (valueCode: the province whose node holds the record).

A resident's own token (patient/ scopes, as the resident portal holds) is forwarded too, but only for the
resident it is bound to: the search must name that Patient's own ID number — the Patient as this node's
disclosure gate lets the token see it — and nothing else in the same parameter, and no _include/_revinclude.
The home node knows nothing of this node's patients, so it is asked as for any client of this province (the
token's patient/ scopes as user/ ones; a peer may only read): its consent decision applies unchanged, and
without the resident's Consent there for this province nothing comes back. What does come back names the
resident's Patient at the home node by a relative reference, which means nothing here: it is given as the
absolute reference to the same resident's Patient at this node (the one the token is bound to, which holds
that ID number), with the ID number as Reference.identifier, so that this node's disclosure gate judges the
record as the resident's own, like every other record that leaves this node.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from app.core.access import AccessRecord, Principal
from app.core.errors import Issue
from app.federation.index import ID_SYSTEM
from app.federation.peers import PeerUnreachable

REMOTE_CURSOR = "_remote"
DONE = "done"
HOME_PROVINCE = "https://ehc.example.cn/fhir/StructureDefinition/home-province"
_NOT_FORWARDED_FOR_RESIDENTS = ("_include", "_revinclude")
_WITHHELD = re.compile(r"^(\d+) matching resource")


class RemoteEntries(list[dict[str, Any]]):
    """Entries of other nodes, with what paging needs (active: this search was sent to other nodes)."""

    def __init__(self, active: bool = False) -> None:
        super().__init__()
        self.active = active
        self.next_cursors: dict[str, str] = {}
        self.total = 0


def resident_id(params: list[tuple[str, str]], resource_type: str) -> str | None:
    """The resident ID number a search names, if any."""
    for name, value in params:
        base = name.split(":", 1)[0]
        if not (name.endswith(".identifier") or (resource_type == "Patient" and base == "identifier")):
            continue
        for one in value.split(","):
            system, _, number = one.partition("|")
            if system == ID_SYSTEM and number:
                return number
    return None


def _encode(cursors: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursors, sort_keys=True).encode()).decode().rstrip("=")


def _decode(token: str) -> dict[str, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _cursor_of(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            for k, v in parse_qsl(urlsplit(str(link.get("url", ""))).query):
                if k == "_cursor":
                    return v
    return None


def remote_entries(req: Any, svc: Any, resource_type: str,
                   params: list[tuple[str, str]]) -> tuple[RemoteEntries, list[Issue]]:
    fed = svc.extensions.get("federation")
    principal = req.principal
    if fed is None or fed.national or principal is None or principal.extra.get("via_node"):
        return RemoteEntries(), []  # no federation here, or this search already came from another node
    remote = req.param(REMOTE_CURSOR)
    if req.param("_cursor") and remote is None:
        return RemoteEntries(), []
    # The client's own parameters: the home node adds the constraints of the requester's scopes itself.
    params = [(k, v) for k, v in req.params if k not in ("_cursor", REMOTE_CURSOR, "_format", "_pretty")]
    number = resident_id(params, resource_type)
    if number is None or fed.national_node() is None:
        return RemoteEntries(), []
    asker = principal
    resident = not any(s.startswith(("user/", "system/")) for s in principal.scopes)
    if resident:
        forwarded = _for_resident(req, svc, principal, resource_type, params, number)
        if forwarded is None:
            return RemoteEntries(), []
        asker, params = forwarded
    out = RemoteEntries(active=True)
    if remote == DONE:
        return out, []
    cursors = _decode(remote) if remote else None
    if remote and not cursors:
        return out, [Issue(f"{REMOTE_CURSOR} is not a paging cursor this server issued", "invalid", "warning",
                           [REMOTE_CURSOR])]
    issues: list[Issue] = []
    try:
        results = fed.query(asker, resource_type, params, cursors)
    except PeerUnreachable as err:
        issues.append(Issue(f"the national node (province 00) is unreachable ({err.reason}): records kept at "
                            "other provinces' nodes are not included", "transient", "warning"))
        results = []
    summary = []
    for result in results:
        province = str(result.get("province"))
        if "unreachable" in result:
            issues.append(Issue(f"province {province} is unreachable ({result['unreachable']}): its records "
                                "are not included", "transient", "warning"))
            summary.append(f"province {province}: unreachable")
            continue
        bundle = result.get("bundle") if isinstance(result.get("bundle"), dict) else {}
        if result.get("status") != 200 or bundle.get("resourceType") != "Bundle":
            text = "; ".join(str(i.get("diagnostics")) for i in bundle.get("issue") or []) or "no searchset"
            issues.append(Issue(f"province {province} refused the query ({result.get('status')}): {text}",
                                "forbidden" if result.get("status") in (401, 403) else "exception", "warning"))
            summary.append(f"province {province}: refused {result.get('status')}")
            continue
        shown = withheld = 0
        for entry in bundle.get("entry") or []:
            mode = (entry.get("search") or {}).get("mode")
            if mode == "outcome":
                for issue in (entry.get("resource") or {}).get("issue") or []:
                    m = _WITHHELD.match(str(issue.get("diagnostics", "")))
                    if issue.get("code") == "suppressed" and m:
                        withheld += int(m.group(1))
                continue
            kept = {k: entry[k] for k in ("fullUrl", "resource", "search") if k in entry}
            kept["extension"] = [{"url": HOME_PROVINCE, "valueCode": province}]
            if resident and isinstance(kept.get("resource"), dict):
                _local_patient(svc, kept["resource"], params, number, f"{req.base}/Patient/{principal.patient}")
            out.append(kept)
            shown += mode == "match"
        if withheld:
            issues.append(Issue(f"{withheld} matching resource(s) withheld at province {province}: no consent "
                                "of the patient there covers this client", "suppressed", "information"))
        if isinstance(bundle.get("total"), int):
            out.total += int(bundle["total"])
        nxt = _cursor_of(bundle)
        if nxt:
            out.next_cursors[province] = nxt
        summary.append(f"province {province}: {shown} shown, {withheld} withheld")
    svc.record_access(AccessRecord("search", resource_type, [], "0", 200, principal, req.query_string(),
                                   "cross-province query through the national node: " + "; ".join(summary or
                                                                                                  ["no other node"]),
                                   remote_addr=req.remote_addr))
    return out, issues


def _for_resident(req: Any, svc: Any, principal: Principal, resource_type: str, params: list[tuple[str, str]],
                  number: str) -> tuple[Principal, list[tuple[str, str]]] | None:
    """(whom to ask for, parameters) of a resident's own search, or None when it is not forwarded."""
    from app.federation.service import resident_id_number

    if not principal.patient or not any(s.startswith("patient/") for s in principal.scopes):
        return None
    doc = svc.repo.get_doc("Patient", principal.patient)
    if not doc or doc.get("del") or not req.gate.admits("Patient", doc) or \
            resident_id_number(doc.get("res")) != number:
        return None  # not the ID number of the patient this token is bound to
    for _name, value in params:
        values = value.split(",")
        if any(v.partition("|")[0] == ID_SYSTEM for v in values) and values != [f"{ID_SYSTEM}|{number}"]:
            return None  # another resident named beside (or instead of) the token's own
    kept = [(k, v) for k, v in params if k.split(":", 1)[0] not in _NOT_FORWARDED_FOR_RESIDENTS]
    scopes = ["user/" + s[len("patient/"):] for s in principal.scopes if s.startswith("patient/")]
    return replace(principal, scopes=scopes, patient=None), kept


def _local_patient(svc: Any, resource: dict[str, Any], params: list[tuple[str, str]], number: str,
                   local: str) -> None:
    """The home node's reference to the resident's Patient (the one the chained parameter matched) as the
    reference to the resident's Patient here (`local`, absolute) with the ID number; left unchanged when the
    match is not one Patient."""
    rtype = resource.get("resourceType")
    names = {k.split(".", 1)[0].split(":", 1)[0] for k, v in params if k.endswith(".identifier")
             and v == f"{ID_SYSTEM}|{number}"}
    refs: set[str] = set()
    for name in names:
        param = svc.registry.get(rtype, name) if isinstance(rtype, str) else None
        for value in param.evaluator()(resource) if param is not None else []:
            ref = value.get("reference") if isinstance(value, dict) else None
            if isinstance(ref, str) and ref.startswith("Patient/") and ref.count("/") == 1:
                refs.add(ref)
    if len(refs) != 1:
        return
    target = refs.pop()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("reference") == target:
                node["reference"] = local
                node["type"] = "Patient"
                node["identifier"] = {"system": ID_SYSTEM, "value": number}
            for key, child in node.items():
                if key != "contained":
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(resource)


def merge_remote(bundle: dict[str, Any], req: Any, entries: list[dict[str, Any]], issues: list[Issue]) -> None:
    """Fold the other nodes' part into a local searchset Bundle (in place)."""
    remote = entries if isinstance(entries, RemoteEntries) else RemoteEntries()
    if not remote.active and not issues:
        return
    local: list[dict[str, Any]] = bundle.setdefault("entry", [])
    if req.param(REMOTE_CURSOR) is not None and not req.param("_cursor"):
        local[:] = [e for e in local if (e.get("search") or {}).get("mode") == "outcome"]  # local pages are over
    outcome = next((e for e in local if (e.get("search") or {}).get("mode") == "outcome"), None)
    at = local.index(outcome) if outcome else len(local)
    local[at:at] = list(remote)
    if issues:
        if outcome is None:
            outcome = {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}}
            local.append(outcome)
        outcome["resource"].setdefault("issue", []).extend(i.to_json() for i in issues)
    if isinstance(bundle.get("total"), int):
        bundle["total"] += remote.total
    if not remote.active:
        return
    links = [lk for lk in bundle.get("link") or [] if lk.get("relation") != "next"]
    local_next = next((lk["url"] for lk in bundle.get("link") or [] if lk.get("relation") == "next"), None)
    token = _encode(remote.next_cursors) if remote.next_cursors else DONE
    if local_next:
        links.append({"relation": "next", "url": _with(local_next, token)})
    elif remote.next_cursors:
        self_url = next((lk["url"] for lk in links if lk.get("relation") == "self"), "")
        links.append({"relation": "next", "url": _with(self_url, token, drop_cursor=True)})
    bundle["link"] = links


def _with(url: str, token: str, drop_cursor: bool = False) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k != REMOTE_CURSOR and not (drop_cursor and k == "_cursor")]
    query.append((REMOTE_CURSOR, token))
    return parts._replace(query=urlencode(query)).geturl()
