"""Merging two Patients that turn out to be one resident (Patient/$merge, after FHIR R5 Patient-merge).

The target keeps its id and card; it gains the source's identifiers (their claims move with them, so every
identifier keeps finding the resident), any element it lacks, and a link `replaces` to the source. The source
becomes `active: false` with a link `replaced-by` to the target and its identifiers marked `use: old`. Every
resource that references the source (through the posting lists, Repository.referrers) is rewritten to
reference the target, as a new version. Refused: the same Patient on both sides (422), a source that was
already merged (409), a merged target (422), and two records whose lifelong documents differ (422: two
residents). Runs under the leases of both Patients and of the source's identifiers.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from app.core.access import Change
from app.core.errors import FhirError, conflict, unprocessable
from app.core.ids import replaced_by
from app.mpi.index import MasterIndex, merge_into
from app.services import Services
from app.store.repository import WriteContext

MERGE_ATTEMPTS = 5  # a target changed between the read and the write: read and merge again, this many times


@dataclass
class MergeResult:
    target: dict[str, Any]
    source: dict[str, Any]
    repointed: list[str] = field(default_factory=list)  # "Type/id" of the resources rewritten


def merged_target(target: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The target as it will be: identifiers and missing elements of the source, and a link replaces."""
    donor = {k: v for k, v in source.items() if k not in ("id", "meta", "link", "active", "text")}
    out = merge_into(target, donor)
    link = {"other": {"reference": f"Patient/{source['id']}"}, "type": "replaces"}
    if link not in (out.get("link") or []):
        out.setdefault("link", []).append(link)
    return out


def retired_source(source: dict[str, Any], target_id: str) -> dict[str, Any]:
    out = copy.deepcopy(source)
    out["active"] = False
    out["link"] = [*(out.get("link") or []), {"other": {"reference": f"Patient/{target_id}"}, "type": "replaced-by"}]
    for ident in out.get("identifier") or []:
        if isinstance(ident, dict):
            ident["use"] = "old"
    return out


def check_mergeable(index: MasterIndex, source: dict[str, Any], target: dict[str, Any]) -> None:
    if source["id"] == target["id"]:
        raise unprocessable("source and target are the same Patient", expression="source-patient")
    into = replaced_by(source)
    if into is not None:
        raise conflict(f"Patient/{source['id']} was already merged into Patient/{into}", expression="source-patient")
    into = replaced_by(target)
    if into is not None or target.get("active") is False:
        raise unprocessable(f"the target Patient/{target['id']} is inactive (merged into Patient/{into})",
                            expression="target-patient")
    held: dict[str, set[str]] = {}
    for e in index.entries(target):
        if e.lifelong and e.master:
            held.setdefault(e.system, set()).add(e.value)
    for e in index.entries(source):
        if e.lifelong and e.master and e.system in held and e.value not in held[e.system]:
            raise unprocessable(f"source and target hold different {e.system} numbers: they are two residents",
                                expression="source-patient")


def merge_patients(svc: Services, index: MasterIndex, hooks: Any, source_id: str, target_id: str,
                   context: WriteContext, preview: bool = False) -> MergeResult:
    source = svc.repo.read("Patient", source_id, fire=False).resource or {}
    target = svc.repo.read("Patient", target_id, fire=False).resource or {}
    check_mergeable(index, source, target)
    if preview:
        return MergeResult(merged_target(target, source), retired_source(source, target_id),
                           [f"{t}/{i}" for t, i in svc.repo.referrers("Patient", source_id)
                            if (t, i) != ("Patient", target_id)])
    token = f"merge:{source_id}>{target_id}"
    names = ["mpi|patient|" + source_id, "mpi|patient|" + target_id]
    names += ["mpi|" + e.key for e in index.entries(source)]
    hooks.acquire(names, token)
    try:
        trusted = WriteContext(context.province, context.client_id, context.organization, context.user,
                               {**context.extra, "mpi_trusted": True, "mpi_merge_from": source_id})
        for attempt in range(MERGE_ATTEMPTS):
            # Re-read under the leases: another merge of either may have finished meanwhile. A plain PUT or PATCH
            # takes no lease, so both are written If-Match the versions read (a change made meanwhile is merged
            # again, not undone).
            src = svc.repo.read("Patient", source_id, fire=False)
            tgt = svc.repo.read("Patient", target_id, fire=False)
            source, target = src.resource or {}, tgt.resource or {}
            check_mergeable(index, source, target)
            # Every referrer is judged before anything is written: a merge is done whole or not at all.
            plan = plan_repoint(svc, source_id, target_id, context)
            try:
                new_target = svc.repo.update("Patient", target_id, merged_target(target, source), context=trusted,
                                             if_match=tgt.vid)
            except FhirError as err:
                if err.status == 412 and attempt + 1 < MERGE_ATTEMPTS:
                    continue
                raise
            new_source = svc.repo.update("Patient", source_id, retired_source(source, target_id), context=trusted,
                                         if_match=src.vid)
            repointed = repoint(svc, plan, source_id, target_id, context)
            # Records written for the source between the plan and its retirement (from now on they are refused).
            late = plan_repoint(svc, source_id, target_id, context, judge=False)  # judged as they are written
            repointed += repoint(svc, late, source_id, target_id, context)
            break
    finally:
        hooks.release(token)
    return MergeResult(new_target.resource or {}, new_source.resource or {}, repointed)


def _rewriter(source_id: str, target_id: str) -> Any:
    pattern = re.compile(rf"^(.*/)?Patient/{re.escape(source_id)}(/_history/[^/]+)?$")

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    m = pattern.match(value)
                    out[key] = f"{m.group(1) or ''}Patient/{target_id}" if m else value
                else:
                    out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(x) for x in node]
        return node

    return rewrite


def plan_repoint(svc: Services, source_id: str, target_id: str, context: WriteContext, judge: bool = True
                 ) -> list[tuple[str, str, int, dict[str, Any]]]:
    """Each live resource referencing Patient/source, with its version and its rewrite to Patient/target, every
    rewrite judged by the change gate when `judge` (403 naming the record before any write of the merge)."""
    rewrite = _rewriter(source_id, target_id)
    plan = []
    for rtype, rid in svc.repo.referrers("Patient", source_id):
        if (rtype, rid) == ("Patient", target_id):
            continue  # its link 'replaces' names the source on purpose
        doc = svc.repo.get_doc(rtype, rid)
        if doc is None or doc.get("del"):
            continue
        new = rewrite(doc["res"])
        if new == doc["res"]:
            continue
        try:
            if judge:
                svc.repo.admit(context, Change(rtype, doc["res"], new, doc.get("prov")))
        except FhirError as err:
            raise FhirError(err.status, f"re-pointing {rtype}/{rid} to Patient/{target_id} is not allowed: "
                                        f"{err.diagnostics}; nothing was merged") from err
        plan.append((rtype, rid, int(doc["vid"]), new))
    return plan


def repoint(svc: Services, plan: list[tuple[str, str, int, dict[str, Any]]], source_id: str, target_id: str,
            context: WriteContext) -> list[str]:
    """Write the planned rewrites (a new version each). One changed since it was planned is rewritten anew."""
    done = []
    for rtype, rid, vid, new in plan:
        try:
            try:
                svc.repo.update(rtype, rid, new, context=context, if_match=vid)
            except FhirError as err:
                if err.status != 412:
                    raise
                doc = svc.repo.get_doc(rtype, rid)
                if doc is None or doc.get("del"):
                    continue
                fresh = _rewriter(source_id, target_id)(doc["res"])
                svc.repo.update(rtype, rid, fresh, context=context, if_match=int(doc["vid"]))
        except FhirError as err:
            raise FhirError(err.status, f"re-pointing {rtype}/{rid} to Patient/{target_id} failed: "
                                        f"{err.diagnostics}") from err
        done.append(f"{rtype}/{rid}")
    return done
