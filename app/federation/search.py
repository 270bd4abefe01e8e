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
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from app.core.access import AccessRecord
from app.core.errors import Issue
from app.federation.index import ID_SYSTEM
from app.federation.peers import PeerUnreachable

REMOTE_CURSOR = "_remote"
DONE = "done"
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
    if number is None or not any(s.startswith(("user/", "system/")) for s in principal.scopes) or \
            fed.national_node() is None:
        return RemoteEntries(), []
    out = RemoteEntries(active=True)
    if remote == DONE:
        return out, []
    cursors = _decode(remote) if remote else None
    if remote and not cursors:
        return out, [Issue(f"{REMOTE_CURSOR} is not a paging cursor this server issued", "invalid", "warning",
                           [REMOTE_CURSOR])]
    issues: list[Issue] = []
    try:
        results = fed.query(principal, resource_type, params, cursors)
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
            out.append({k: entry[k] for k in ("fullUrl", "resource", "search") if k in entry})
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
