"""Wiring of the federation into a node (create_app calls init_app after the auth layer).

- the access policy is wrapped (policy.FederatedPolicy): only authenticate changes;
- Patient writes: before the write, a new formal card is claimed at the national node (one card nationwide:
  the national node's answer replaces the card this node derived); after it, the Patient is queued in the
  outbox for the national index; a background thread delivers the outbox and refreshes the card union;
- the card service verifies codes of other nodes (cards.FederatedSigning / FederatedCards / FederatedNonces
  around app.ehc's objects, so /ehc/keys and /ehc/revocations at the national node publish the union);
- the national node answers Patient/$ihe-pix from its index.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from flask import Flask
from pymongo.errors import InvalidOperation, PyMongoError

from app.core.ids import replaced_by
from app.core.timeutil import utcnow
from app.federation.cards import REFRESH, FederatedCards, FederatedNonces, FederatedSigning, verify_nationwide
from app.federation.index import EHC_SYSTEM
from app.federation.keys import NodeKey
from app.federation.policy import FederatedPolicy
from app.federation.registry import NATIONAL, NodeRegistry
from app.federation.service import Federation, card_of, resident_id_number
from app.services import Services
from app.store.events import StoreEvent
from app.store.repository import WriteContext, write_context

log = logging.getLogger("ehc.federation")
MASTER_INDEX_SYSTEM = "urn:ehc:id:master-index"
CATCH_UP_SECONDS = 60


def registry_for(svc: Services) -> NodeRegistry:
    """The node registry of a Services instance (the CLI uses it without Flask)."""
    from app.auth.plugin import auth_state

    reg: NodeRegistry | None = svc.extensions.get("federation_registry")
    if reg is None:
        reg = svc.extensions["federation_registry"] = NodeRegistry(svc.repo.db, auth_state(svc).store,
                                                                   svc.settings.province)
    return reg


class PatientHooks:
    def __init__(self, fed: Federation, wake: threading.Event) -> None:
        self.fed = fed
        self.wake = wake
        self._local = threading.local()

    def _claims(self) -> dict[str, str]:
        """Patient id -> the card this thread claimed for its write, until the write is stored (post_write)."""
        found = getattr(self._local, "claims", None)
        if found is None:
            found = self._local.claims = {}
        return found

    def abandon(self) -> None:
        """After a request: the claims of writes that were refused after their claim (a 422 from a later check)
        are withdrawn, so that they hold no card nationally (a card that no node holds is cancelled)."""
        claims, self._local.claims = self._claims(), {}
        for pid, card in claims.items():
            self.fed.outbox.enqueue(pid, withdraw=[card])
        if claims:
            self.wake.set()

    def pre_write(self, event: StoreEvent) -> None:
        """Registered after app.ehc's: the card is on the resource; make it the nationwide one."""
        res = event.resource
        ctx = write_context(event)
        if res is None or not self._federated(ctx):
            return
        number = resident_id_number(res)
        card = next((i for i in res.get("identifier") or [] if isinstance(i, dict)
                     and i.get("system") == EHC_SYSTEM and i.get("use") != "old"), None)
        if number is None or card is None or not isinstance(card.get("value"), str):
            return
        target = res.get("_ehc_existing") or res.get("id")
        prior = None
        if target and target != ctx.extra.get("mpi_new_id"):
            doc = self.fed.svc.repo.get_doc("Patient", target)
            prior = doc.get("res") if doc and not doc.get("del") else None
        held = {(i.get("system"), i.get("value")) for i in (prior or {}).get("identifier") or [] if isinstance(i, dict)}
        if (EHC_SYSTEM, card["value"]) in held:
            return  # this card was claimed when it was issued
        nationwide = self.fed.claim_card(number, card["value"])
        if nationwide and target:
            self._claims()[str(target)] = nationwide
        if nationwide and nationwide != card["value"]:
            card["value"] = nationwide  # the card this node derived is not issued: the resident has one already
            res["identifier"] = [i for i in res["identifier"] if not (
                isinstance(i, dict) and i.get("system") == MASTER_INDEX_SYSTEM and (i.get("system"), i.get("value"))
                not in held)]

    def _federated(self, ctx: WriteContext) -> bool:
        """Whether the national node is trusted (as the worker last read it: no round trip), once per write."""
        if "federation_national" not in ctx.extra:
            ctx.extra["federation_national"] = self.fed.national_node() is not None
        return bool(ctx.extra["federation_national"])

    def post_write(self, event: StoreEvent) -> None:
        """Queue the Patient's index entry (every card is known nationally, with or without an ID number), and
        the withdrawal of the card it held before when that was replaced (a corrected ID number)."""
        res = event.resource or {}
        ctx = write_context(event)
        self._claims().pop(str(res.get("id")), None)  # stored: its claim stands
        if not res.get("id") or not self._federated(ctx):
            return
        card = card_of(res)
        # a merged-away source keeps its card, which now points to the target (docs/mpi.md): not replaced
        replaced = [c for c in [card_of(event.previous)] if c is not None and c != card and not _merged_away(res)]
        if card is not None or replaced:
            self.fed.outbox.enqueue(str(res["id"]), withdraw=replaced)
            self.wake.set()


class Worker(threading.Thread):
    """Re-reads the node registry every second, delivers the outbox and refreshes the card union; stops when the
    database handle is closed."""

    def __init__(self, fed: Federation, wake: threading.Event) -> None:
        super().__init__(name=f"ehc-federation-{fed.province}", daemon=True)
        self.fed, self.wake = fed, wake
        self.stopped = threading.Event()

    def run(self) -> None:
        trusted_national = False
        while not self.stopped.is_set():
            self.wake.wait(1.0)
            self.wake.clear()
            try:
                nodes = self.fed.registry.refresh()
                if not nodes:
                    trusted_national = False
                    continue
                if not self.fed.national and NATIONAL in nodes and not trusted_national:
                    self.catch_up()
                trusted_national = NATIONAL in nodes
                if not self.fed.national:
                    while self.fed.deliver() >= 50:
                        pass
                if time.monotonic() - self.fed.last_union >= REFRESH:
                    self.fed.refresh_union()
            except InvalidOperation:
                return  # the Services were closed (a test module ended)
            except PyMongoError as err:
                log.warning("federation worker: %s", err)
            except Exception:  # noqa: BLE001 - the worker must outlive one bad round
                log.exception("federation worker round failed")


    def catch_up(self) -> None:
        """The national node has just become trusted (or this process just started): Patients written in the last
        minute may have been written before this process knew it; queue them (`ehc nodes add` queued the older
        ones; a second delivery changes nothing)."""
        since = utcnow() - timedelta(seconds=CATCH_UP_SECONDS)
        ids = [d["_id"] for d in self.fed.svc.repo.current("Patient").find({"ts": {"$gte": since}}, {"_id": 1})]
        if ids:
            self.fed.outbox.enqueue_all(ids)


def init_app(app: Flask, svc: Services) -> None:
    from app.auth.plugin import auth_state
    from app.auth.policy import SmartPolicy
    from app.ehc.plugin import card_service
    from app.federation.web import bp, national_pix

    registry = registry_for(svc)
    key = NodeKey(svc.settings.data_dir)
    fed = Federation(svc, registry, key)
    svc.extensions["federation"] = fed
    # Node tokens are checked even where EHC_AUTH_REQUIRED is off (then only the /federation endpoints use it).
    smart = svc.policy if svc.settings.auth_required else SmartPolicy(svc, auth_state(svc).store)
    fed.policy = FederatedPolicy(smart, registry, fed.replay)
    if svc.settings.auth_required:
        svc.policy = fed.policy

    cards = card_service(svc)
    national = svc.settings.province == NATIONAL
    cards.signing = FederatedSigning(cards.signing, fed.union, publish_union=national)  # type: ignore[assignment]
    cards.cards = FederatedCards(cards.cards, fed.union, publish_union=national,  # type: ignore[assignment]
                                 withdraw=fed.withdraw_deleted, federated=fed.federated)
    cards.nonces = FederatedNonces(cards.nonces, fed.union, fed.spend_remote)  # type: ignore[assignment]
    if not national:
        cards.verify = verify_nationwide(cards.verify, fed.card_known, cards.nonces)  # type: ignore[method-assign]

    wake = threading.Event()
    if not national:
        hooks = PatientHooks(fed, wake)
        app.teardown_request(lambda _exc: hooks.abandon())
        svc.events.subscribe("pre-create", hooks.pre_write, "Patient")
        svc.events.subscribe("pre-update", hooks.pre_write, "Patient")
        svc.events.subscribe("created", hooks.post_write, "Patient")
        svc.events.subscribe("updated", hooks.post_write, "Patient")
    else:
        app.before_request(national_pix)
    app.register_blueprint(bp)
    worker = Worker(fed, wake)
    svc.extensions["federation_worker"] = worker
    worker.start()


def _merged_away(resource: dict[str, Any]) -> bool:
    return replaced_by(resource) is not None
