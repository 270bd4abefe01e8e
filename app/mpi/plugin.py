"""The master patient index attached to storage events: one Patient per resident.

pre-create / pre-update of a Patient:
1. identifiers validated and normalised (app.mpi.identifiers): 422 naming Patient.identifier[i].value,
   Patient.gender or Patient.birthDate; a client cannot submit a server-issued number.
2. the leases "mpi|<claim key>" of every identifier new to the record are taken (sorted: no deadlock),
   then their claims are inserted naming the id the version will have, in one round trip; only the keys that
   had a claim already are read. A create whose identifiers belong to one registered resident becomes an
   update of that Patient (resource["_ehc_existing"]); its identifiers are merged in after the registration is
   checked against the record (409 on a different name, birth date, gender or lifelong document). Identifiers
   of two different residents, or (on update) of another resident, are refused with 409 (and the claims just
   inserted are dropped).
3. the remaining claims are written, naming the id the version will have, and the leases are held until the
   created / updated event (or the end of the request, or the import row, if the write fails).
The stored version read here is left in StoreEvent.extra[PATIENT_DOC] for the card handler; a writer that has
read it already may pass it the same way.
created / updated / deleted: claims of removed identifiers are dropped, name postings follow the record.

WriteContext.extra: "allow_legacy" (bulk import: 15-digit ID numbers), "mpi_trusted" (the server writes
server-issued identifiers, e.g. $merge), "mpi_merge_from" (claims of that Patient may move); BATCH_CLAIMED and
BATCH_NAMES (the bulk import's batches of new residents: leases and claims taken for the whole batch, name
postings written for the whole batch).
"""

from __future__ import annotations

import copy
import logging
import threading
from contextlib import AbstractContextManager
from typing import Any

from flask import Flask
from pymongo.errors import PyMongoError

from app.core.access import Change
from app.core.errors import FhirError, Issue, conflict, unprocessable
from app.core.ids import new_id, replaced_by
from app.keyring import keyring_for
from app.mpi.identifiers import IdentifierRegistry, normalize_patient_identifiers
from app.mpi.index import MasterIndex, check_same_resident, merge_into
from app.services import Services
from app.store.events import PRIOR_DOC, StoreEvent
from app.store.repository import REBASE, Rebase, WriteContext, write_context

# StoreEvent.extra key: (patient id, its stored document or None) as read by a pre-write handler of this event,
# so that the handlers after it (the card) do not read the same version again.
PATIENT_DOC = PRIOR_DOC
# WriteContext.extra keys of the bulk import's batches (app.mpi.importer): (patient id, claim keys) whose leases
# the import holds and whose claims it inserted naming that id; and the dict collecting the name postings of the
# batch's new residents (name key -> patient ids), written in one go by MasterIndex.add_names_many.
BATCH_CLAIMED = "mpi_batch_claimed"
BATCH_NAMES = "mpi_batch_names"

log = logging.getLogger("ehc.mpi")


class MpiHooks:
    """The storage event handlers, with the leases each thread holds between pre- and post-write."""

    def __init__(self, svc: Services, index: MasterIndex) -> None:
        self.svc = svc
        self.index = index
        self.registry: IdentifierRegistry = index.registry
        self._local = threading.local()

    # -- leases held across one write ------------------------------------------------------------------

    def _held(self) -> dict[str, tuple[AbstractContextManager[None], str]]:
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = {}
        return held

    def acquire(self, names: list[str], pid: str) -> None:
        held = self._held()
        try:
            for name in sorted(set(names)):
                if name in held:  # the same thread (a transaction) already holds it
                    continue
                cm = self.svc.leases.hold(name)
                cm.__enter__()
                held[name] = (cm, pid)
        except BaseException:
            self.release(pid)
            raise

    def _provisional(self) -> dict[str, set[str]]:
        """Patient id -> claim keys this thread's write made name it, until the write is confirmed (post_write)."""
        found = getattr(self._local, "provisional", None)
        if found is None:
            found = self._local.provisional = {}
        return found

    def _drop_unwritten(self, pid: str | None) -> None:
        """(Under the leases.) A write that failed after its claims were written: the claims of identifiers the
        stored record does not hold are dropped. Left, they would give the record identifiers it was refused
        (and, through them, the records that name a patient by those identifiers)."""
        provisional = self._provisional()
        targets = [t for t in provisional if pid is None or t == pid]
        try:
            for target in targets:
                keys = provisional[target]
                doc = self.svc.repo.get_doc("Patient", target)
                stored = doc["res"] if doc and not doc.get("del") else None
                self.index.drop_claims(keys - {e.key for e in self.index.entries(stored)}, target)
        except PyMongoError as err:  # the database is away: the leases are released all the same, at once
            log.warning("mpi: the claims of failed writes to %s could not be checked (%s)",
                        ", ".join(f"Patient/{t}" for t in targets), type(err).__name__)
        finally:
            for target in targets:
                provisional.pop(target, None)

    def release(self, pid: str | None = None) -> None:
        """Release the leases this thread holds for pid (all of them when pid is None), after dropping the claims
        of a write that was not made."""
        self._drop_unwritten(pid)
        held = self._held()
        for name in sorted([n for n, (_, p) in held.items() if pid is None or p == pid], reverse=True):
            cm, _ = held.pop(name)
            try:
                cm.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - an unreleased lease expires by itself
                pass

    def _reassign(self, old: str, new: str) -> None:
        held = self._held()
        for name, (cm, p) in list(held.items()):
            if p == old:
                held[name] = (cm, new)

    # -- pre-write ---------------------------------------------------------------------------------------

    def pre_write(self, event: StoreEvent) -> None:
        res = event.resource
        if res is None:
            return
        ctx: WriteContext = write_context(event)
        is_update = event.name == "pre-update"
        rid = res.get("id")
        prior_doc = None
        if is_update and rid:
            known = event.extra.get(PATIENT_DOC)  # the decoded stored version, when the writer passed it along
            prior_doc = known[1] if known is not None and known[0] == rid else self.svc.repo.get_doc("Patient", rid)
            event.extra[PATIENT_DOC] = (rid, prior_doc)  # the card handler after us reads the same version
        prior = prior_doc["res"] if prior_doc and not prior_doc.get("del") else None
        into = replaced_by(prior)
        if into and not ctx.extra.get("mpi_trusted"):
            # Its records and identifiers are the target's now: written again, it would split the resident anew.
            raise conflict(f"Patient/{rid} was merged into Patient/{into}: write to Patient/{into}",
                           expression="Patient")
        if not ctx.extra.get("mpi_trusted"):
            _keep_merge_links(res, prior)
        normalised, issues = normalize_patient_identifiers(
            res, self.registry, allow_legacy=bool(ctx.extra.get("allow_legacy")), existing=prior,
            trusted=bool(ctx.extra.get("mpi_trusted")))
        if issues:
            raise FhirError(422, issues[0].diagnostics, issues=issues)
        if "identifier" in normalised:
            res["identifier"] = normalised["identifier"]
        prior_keys = {e.key for e in self.index.entries(prior)}
        new_entries = [e for e in self.index.entries(res) if e.key not in prior_keys]
        if not new_entries:
            return
        claimed = ctx.extra.get(BATCH_CLAIMED)
        if claimed is not None and not is_update and not rid and {e.key for e in new_entries} <= claimed[1]:
            # The bulk import holds the leases of every identifier and has inserted each claim naming claimed[0]
            # (no claim existed): a new resident, settled as below for claims this handler inserted itself.
            res["_ehc_existing"] = claimed[0]
            ctx.extra["mpi_new_id"] = claimed[0]
            return
        pid = rid or new_id()
        self.acquire(["mpi|" + e.key for e in new_entries], pid)
        try:
            claimed = self._resolve(res, ctx, is_update, rid, pid, new_entries, event.extra)
        except BaseException:
            self.release(pid)
            raise
        target = str(res.get("_ehc_existing") or pid)
        self._provisional().setdefault(target, set()).update(claimed)

    def _resolve(self, res: dict[str, Any], ctx: WriteContext, is_update: bool, rid: str | None, pid: str,
                 new_entries: list[Any], event_extra: dict[str, Any]) -> set[str]:
        """The keys whose claims now name the record being written (inserted, or taken over from nobody)."""
        # Optimistic: the claims of identifiers nobody holds are inserted naming pid in one round trip (we hold
        # their leases); only the keys that had a claim are read. A new resident costs one command here.
        taken = self.index.claim_new((e.key for e in new_entries), pid)
        fresh = {e.key for e in new_entries} - taken
        try:
            held_by_someone = self._settle(res, ctx, is_update, rid, pid, new_entries, taken, event_extra)
        except BaseException:
            if fresh:  # refused: the claims just inserted name a version that will not be written
                self.index.drop_claims(fresh, pid)
            raise
        return {e.key for e in new_entries} - held_by_someone

    def _settle(self, res: dict[str, Any], ctx: WriteContext, is_update: bool, rid: str | None, pid: str,
                new_entries: list[Any], taken: set[str], event_extra: dict[str, Any]) -> set[str]:
        """Returns the keys whose claims named a live Patient before this write."""
        owners = self.index.owners(sorted(taken))
        live = set(owners)
        held = {p for _, p in self._held().values()}
        # A claim naming an id this thread is about to write: the same resident twice in one transaction.
        for key, owner in list(owners.items()):
            if owner == ctx.extra.get("mpi_merge_from") or owner == rid:
                owners.pop(key)
        pending = [e for e in new_entries if e.key in taken and e.key not in owners
                   and self._pending_elsewhere(e.key, pid, held)]
        if pending:
            raise conflict(f"identifier {pending[0].system}|{pending[0].value} appears twice in this request",
                           expression="Patient.identifier")
        if is_update or rid:
            if owners:
                self._refuse_taken(res, new_entries, owners)
            self.index.write_claims(taken, pid)  # dangling claims, or those moving from a merged record
            return live
        residents = sorted(set(owners.values()))
        if len(residents) > 1:
            self._refuse_taken(res, new_entries, owners, several=True)
        if residents:
            existing_id = residents[0]
            doc = self.svc.repo.get_doc("Patient", existing_id)
            event_extra[PATIENT_DOC] = (existing_id, doc)
            existing = doc["res"] if doc else {}
            # The change gate first: a writer that may not register into this record at all (a resident's app)
            # learns nothing of it from the comparison below.
            self.svc.repo.admit(ctx, Change("Patient", existing, existing, (doc or {}).get("prov"), registration=True,
                                            offered=res))
            check_same_resident(existing, res, self.index.entries(res), self.index.entries(existing), existing_id)
            # A registration from another province links the resident to the hospital's identifiers (its record
            # number, the card); the record's content stays the home province's to change (app.auth.policy).
            home = str((doc or {}).get("prov") or self.svc.settings.province)
            offered = copy.deepcopy(res) if ctx.province == home else {"identifier": list(res.get("identifier") or [])}
            merged = merge_into(existing, offered)
            if doc:  # a change written to the record before this registration is merged into the newer version
                ctx.extra.setdefault(REBASE, {})[existing_id] = Rebase(int(doc["vid"]),
                                                                       lambda current: merge_into(current, offered))
            res.clear()
            res.update(merged)
            self._reassign(pid, existing_id)
            # the claims inserted for its new identifiers move to the registered resident
            self.index.write_claims((e.key for e in new_entries if e.key not in owners), existing_id)
            res["_ehc_existing"] = existing_id
            return live
        self.index.write_claims((e.key for e in new_entries if e.key in taken), pid)  # dangling ones
        res["_ehc_existing"] = pid
        ctx.extra["mpi_new_id"] = pid  # tells later handlers there is no stored version to read
        return live

    def _pending_elsewhere(self, key: str, pid: str, held_pids: set[str]) -> bool:
        claim = self.index.claims.find_one({"_id": key}) if held_pids - {pid} else None
        return bool(claim and claim["p"] in held_pids and claim["p"] != pid)

    def _refuse_taken(self, res: dict[str, Any], entries: list[Any], owners: dict[str, str],
                      several: bool = False) -> None:
        issues = []
        for e in entries:
            if e.key in owners:
                path = next((f"Patient.identifier[{i}]" for i, ident in enumerate(res.get("identifier") or [])
                             if isinstance(ident, dict) and ident.get("system") == e.system
                             and ident.get("value") == e.value), "Patient.identifier")
                issues.append(Issue(f"identifier {e.system}|{e.value} already belongs to Patient/{owners[e.key]}",
                                    "duplicate", expression=[path]))
        if several:
            issues.insert(0, Issue("the identifiers belong to different registered residents "
                                   f"({', '.join('Patient/' + p for p in sorted(set(owners.values())))}); "
                                   "merge them with Patient/$merge first", "conflict"))
        raise FhirError(409, issues[0].diagnostics, issues=issues)

    # -- post-write --------------------------------------------------------------------------------------

    def post_write(self, event: StoreEvent) -> None:
        res = event.resource or {}
        pid = res.get("id")
        if not pid:
            return
        self._provisional().pop(pid, None)  # written: its claims stand
        try:
            old = {e.key for e in self.index.entries(event.previous)}
            new = {e.key for e in self.index.entries(res)}
            if old - new:
                self.index.drop_claims(old - new, pid)
            names = write_context(event).extra.get(BATCH_NAMES)
            if names is not None and event.previous is None:  # a batch of new residents: written with the batch
                for key in self.index.name_postings(res):
                    names.setdefault(key, []).append(pid)
            else:
                self.index.index_names(pid, res, event.previous)
        finally:
            self.release(pid)

    def deleted(self, event: StoreEvent) -> None:
        pid = event.extra.get("id")
        if pid and event.previous:
            self.index.drop_claims((e.key for e in self.index.entries(event.previous)), pid)
            self.index.index_names(pid, None, event.previous)


def master_index(svc: Services) -> MasterIndex:
    return svc.extensions["mpi"]


def identifier_registry(svc: Services) -> IdentifierRegistry:
    """The identifier systems and their rules, also where the master index is not set up (the CLI's account
    commands)."""
    registry: IdentifierRegistry | None = svc.extensions.get("identifiers")
    if registry is None:
        registry = svc.extensions["identifiers"] = IdentifierRegistry.from_profiles(svc.profiles_dir)
    return registry


def setup(svc: Services) -> MpiHooks:
    """Build the index and subscribe its handlers once per Services (the web app and the CLI share this)."""
    hooks: MpiHooks | None = svc.extensions.get("mpi_hooks")
    if hooks is not None:
        return hooks
    # also app.ehc's (through Services.extensions["identifiers"]): which identifiers are master documents
    registry = identifier_registry(svc)
    index = MasterIndex(svc.repo, registry, keyring_for(svc))
    hooks = MpiHooks(svc, index)
    svc.extensions["mpi"] = index
    svc.extensions["mpi_hooks"] = hooks
    svc.events.subscribe_writes("Patient", pre=hooks.pre_write, post=hooks.post_write, deleted=hooks.deleted)
    return hooks


def init_app(app: Flask, svc: Services) -> None:
    hooks = setup(svc)

    @app.teardown_request
    def _release_leases(_exc: BaseException | None) -> None:
        hooks.release()  # leases of a write that failed between its pre- and post-write events


MERGE_LINKS = ("replaced-by", "replaces")


def _keep_merge_links(res: dict[str, Any], prior: dict[str, Any] | None) -> None:
    """Links of type replaced-by and replaces record a Patient/$merge, and the master index follows them (an ID
    number of the source leads to the target): only $merge writes them, after checking that the two are one
    resident. A client's write may not add one (422), and keeps the stored ones whether it sends them or not."""
    def merge_link(link: Any) -> bool:
        return isinstance(link, dict) and link.get("type") in MERGE_LINKS

    stored = [link for link in (prior or {}).get("link") or [] if merge_link(link)]
    links = res.get("link")
    if not isinstance(links, list):
        links = []
    for n, link in enumerate(links):
        if merge_link(link) and link not in stored:
            raise unprocessable(f"a Patient.link of type {link['type']} records a merge and is written by "
                                "Patient/$merge only", expression=f"Patient.link[{n}]")
    if stored or any(merge_link(link) for link in links):
        res["link"] = [link for link in links if not merge_link(link)] + stored
