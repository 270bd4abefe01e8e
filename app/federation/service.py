"""The federation of one node (no Flask): what it asks its peers and what it answers them.

Province node: claims the card of a resident being registered (one card nationwide), delivers the outbox of
index entries, fetches the card keys and revocations union, spends other provinces' one-time codes at their
issuing node, and sends cross-province queries to the national node.
National node: keeps the index, forwards queries and one-time codes to the home nodes, gathers the union.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from app.core.access import Principal
from app.federation import assertions
from app.federation.assertions import Requester
from app.federation.cards import CardUnion
from app.federation.index import EHC_SYSTEM, ID_SYSTEM, NationalIndex
from app.federation.keys import NodeKey
from app.federation.outbox import Outbox
from app.federation.peers import PeerRefused, Peers, PeerUnreachable, http
from app.federation.policy import ReplayGuard
from app.federation.registry import NATIONAL, Node, NodeRegistry

log = logging.getLogger("ehc.federation")

CLAIM_TIMEOUT = 3.0  # a registration waits at most this long for the national node, then goes on locally
QUERY_TIMEOUT = 4.0  # a cross-province search answers within this (plus the local search)
FORWARD_TIMEOUT = 3.0  # the national node's wait for a home node
PERMANENT_REFUSALS = (400, 404, 409, 422)  # an index entry the national node refuses for what it says
PARKED_SECONDS = 3600  # such an entry is tried again after this (the refusal logged as an error each time)
_CARD = re.compile(r"[0-9A-F]{64}")


def resident_id_number(resource: dict[str, Any] | None) -> str | None:
    for ident in (resource or {}).get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == ID_SYSTEM and ident.get("use") != "old" \
                and isinstance(ident.get("value"), str) and ident["value"]:
            return str(ident["value"])
    return None


class Federation:
    def __init__(self, svc: Any, registry: NodeRegistry, key: NodeKey) -> None:
        self.svc = svc
        self.province: str = svc.settings.province
        self.national = self.province == NATIONAL
        self.registry = registry
        self.key = key
        self.peers = Peers(self.province, key)
        self.replay = ReplayGuard(svc.repo.db)
        self.union = CardUnion(svc.repo.db, self.province)
        self.outbox = Outbox(svc.repo.db)
        self.index = NationalIndex(svc.repo.db, svc.extensions["keyring"]) if self.national else None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ehc-federation")
        self.last_union = 0.0
        self.policy: Any = None  # policy.FederatedPolicy, set by plugin.init_app

    def national_node(self, fresh: bool = False) -> Node | None:
        """The trusted national node; reached at EHC_NATIONAL_URL when that is set (its key: the registry's)."""
        node = None if self.national else self.registry.get(NATIONAL, fresh)
        address = getattr(self.svc.settings, "national_url", None)
        if node is not None and address and address != node.url:
            node = replace(node, url=address)
        return node

    # -- requester assertions ------------------------------------------------------------------------------

    def requester_of(self, principal: Principal) -> Requester:
        return Requester(principal.client_id, principal.organization, principal.province or self.province,
                         principal.purpose_of_use, list(principal.scopes))

    def sign_for(self, node: Node, requester: Requester, origin: dict[str, Any] | None = None) -> str:
        return assertions.sign(self.key.key, self.province, node.url, requester, origin)

    # -- province side -------------------------------------------------------------------------------------

    def claim_card(self, id_number: str, card: str) -> str | None:
        """The nationwide card of this resident (None when the national node cannot say now)."""
        node = self.national_node()
        if node is None:
            return None
        try:
            status, body = self.peers.call(node, "POST", "/federation/claim",
                                           body={"idNumber": id_number, "card": card}, timeout=CLAIM_TIMEOUT)
        except (PeerUnreachable, PeerRefused) as err:
            log.warning("card claim deferred: %s", err)
            return None
        if status != 200 or not isinstance(body, dict) or not _is_card(body.get("card")):
            log.warning("card claim refused by the national node (%s): %s", status, body)
            return None
        return str(body["card"])

    def deliver(self, limit: int = 50) -> int:
        """Send due outbox entries to the national node; returns how many were delivered."""
        node = self.national_node()
        if node is None:
            return 0
        sent = 0
        for entry in self.outbox.due(limit):
            doc = self.svc.repo.get_doc("Patient", entry["_id"])
            res = doc.get("res") if doc and not doc.get("del") else None
            number = resident_id_number(res)
            card = card_of(res)
            try:
                for old in entry.get("withdraw") or []:
                    self._withdraw(node, str(entry["_id"]), str(old))
                if card is None:
                    self.outbox.done(entry)  # nothing the national index keeps (deleted)
                    continue
                status, body = self.peers.call(node, "POST", "/federation/index",
                                               body={"card": card, "patient": entry["_id"],
                                                     **({"idNumber": number} if number else {})},
                                               timeout=CLAIM_TIMEOUT)
            except (PeerUnreachable, PeerRefused) as err:
                log.info("index entry for Patient/%s not delivered yet: %s", entry["_id"], err)
                self.outbox.failed(entry)
                break  # the national node is down: try again later, in order
            if status == 200:
                self.outbox.done(entry)
                sent += 1
                if isinstance(body, dict) and _is_card(body.get("card")) and body["card"] != card:
                    self.adopt_card(str(entry["_id"]), card, str(body["card"]))
            elif status in PERMANENT_REFUSALS:  # the same entry would be refused again: parked, not retried at once
                log.error("national node refused the index entry of Patient/%s (%s): %s; retried in %d s", entry["_id"],
                          status, body, PARKED_SECONDS)
                self.outbox.failed(entry, delay=PARKED_SECONDS)
            else:
                log.warning("national node refused the index entry of Patient/%s (%s): %s", entry["_id"], status,
                            body)
                self.outbox.failed(entry)
        return sent

    def _withdraw(self, node: Node, patient_id: str, card: str) -> None:
        """Tell the national node this Patient no longer holds `card`; cancel it here when no node does (or the
        index never knew it), unless another live Patient here holds it (the resident registered again)."""
        cards = self.svc.extensions["ehc"].cards
        holder = cards.patient_of(card)
        still_held = holder is not None and holder != patient_id and self.svc.repo.exists("Patient", holder)
        status, body = self.peers.call(node, "POST", "/federation/withdraw",
                                       body={"card": card, "patient": patient_id, "stillHeld": still_held},
                                       timeout=CLAIM_TIMEOUT)
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("released"), bool):
            raise PeerRefused(NATIONAL, status, body)
        if (body["released"] or body.get("indexed") is False) and not still_held:
            cards.set_status(card, "cancelled", patient_id, "no node holds the resident any more")

    def federated(self) -> bool:
        """A province node whose national node is trusted: its cards are nationwide, cancelled by the national node
        when no node holds them (FederatedCards)."""
        return not self.national and self.national_node() is not None

    def withdraw_deleted(self, resource: dict[str, Any]) -> bool:
        """FederatedCards.cancel_all at a province node: queue the deleted Patient's cards for withdrawal from the
        national index (True), or leave them to be cancelled here when no national node is trusted (False)."""
        if not self.federated() or not resource.get("id"):
            return False
        self.outbox.enqueue(str(resource["id"]), withdraw=_cards_of(resource))
        return True

    def adopt_card(self, patient_id: str, local: str, nationwide: str) -> None:
        """The resident was given a card here while the national node was down, and another node's card was
        claimed first: this Patient takes the nationwide card; its own is kept as an old identifier and
        cancelled (its codes stop verifying)."""
        from app.ehc.cards import card_identifier
        from app.store.repository import WriteContext

        doc = self.svc.repo.get_doc("Patient", patient_id)
        if not doc or doc.get("del"):
            return
        res = copy.deepcopy(doc["res"])
        if card_of(res) == nationwide:
            return  # another worker process adopted it already
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        idents = res.setdefault("identifier", [])
        for ident in idents:
            if isinstance(ident, dict) and ident.get("system") == EHC_SYSTEM and ident.get("value") == local:
                ident["use"] = "old"
                ident["period"] = {**(ident.get("period") or {}), "end": now}
        idents.append(card_identifier(nationwide, "formal"))
        ctx = WriteContext(province=self.province, client_id="federation", extra={"mpi_trusted": True})
        self.svc.repo.update("Patient", patient_id, res, context=ctx)
        cards = self.svc.extensions.get("ehc")
        if cards is not None:
            cards.cards.set_status(local, "cancelled", patient_id, "replaced by the nationwide card " + nationwide)
        log.warning("Patient/%s: card %s (issued while the national node was down) replaced by the nationwide "
                    "card %s", patient_id, local, nationwide)

    def refresh_union(self) -> None:
        """Fetch card keys and revocations: a province node from the national node, the national node from
        every province."""
        self.last_union = time.monotonic()
        sources = [n for n in self.registry.nodes().values() if n.province != self.province]
        # A node no longer trusted (ehc nodes remove) no longer vouches for card keys: its keys (at a province
        # node, the national union's) are dropped; its revocations stay, on the refusing side.
        self.union.forget_keys([n.province if self.national else NATIONAL for n in sources])
        for node in sources:
            try:
                _, keys = http("GET", f"{node.root}/ehc/keys", timeout=3.0, province=node.province)
                _, revs = http("GET", f"{node.root}/ehc/revocations", timeout=3.0, province=node.province)
            except PeerUnreachable as err:
                log.info("card union not refreshed from %s: %s", node.province, err)
                continue
            if not isinstance(keys, dict) or not isinstance(revs, dict):
                continue
            cards = [dict(c, province=c.get("province") or revs.get("province")) for c in revs.get("cards") or []
                     if isinstance(c, dict)]
            if self.national:
                cards = self._revocable(node.province, cards)
            self.union.replace(node.province if self.national else None, list(keys.get("keys") or []), cards)

    def _revocable(self, province: str, cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The revocations a province may publish for every node: of cards it holds as the national index says (or
        that the index does not know: its own local cards). A province listing another's resident's card would
        cancel it nationwide. Only rows not accepted before are looked up (the cost of a refresh follows the new
        revocations, not all of them)."""
        assert self.index is not None
        accepted = {d["_id"] for d in self.union.revoked_col.find({"src": province}, {"_id": 1})}
        kept = []
        for row in cards:
            card = row.get("ehcId")
            if card in accepted or (isinstance(card, str) and self.index.held_by(card, province)):
                kept.append(row)
            else:
                log.warning("province %s listed card %s as %s, but does not hold it: not published", province, card,
                            row.get("status"))
        return kept

    def spend_remote(self, province: str, kid: str, nonce: bytes, exp: int) -> bool | None:
        """Spend a one-time code at its issuing node: True first use, False replayed, None unreachable."""
        node = self.registry.get(province) if self.national else self.national_node()
        if node is None:
            return None
        try:
            status, body = self.peers.call(node, "POST", "/federation/nonce",
                                           body={"province": province, "kid": kid, "nonce": nonce.hex(),
                                                 "exp": exp}, timeout=CLAIM_TIMEOUT)
        except (PeerUnreachable, PeerRefused):
            return None
        if status == 200 and isinstance(body, dict) and isinstance(body.get("first"), bool):
            return bool(body["first"])
        return None

    def card_known(self, card: str) -> bool | None:
        """Whether the national index knows this card (None: cannot say now)."""
        node = self.national_node()
        if node is None:
            return None
        try:
            status, _ = self.peers.call(node, "GET", f"/federation/card/{card}", timeout=CLAIM_TIMEOUT)
        except (PeerUnreachable, PeerRefused):
            return None
        return True if status == 200 else False if status == 404 else None

    def query(self, principal: Principal, resource_type: str, params: list[tuple[str, str]],
              cursors: dict[str, str] | None) -> list[dict[str, Any]]:
        """Results of the other provinces (through the national node). Raises PeerUnreachable."""
        node = self.national_node()
        if node is None:
            return []
        assertion = self.sign_for(node, self.requester_of(principal))
        try:
            status, body = self.peers.call(node, "POST", "/federation/query", requester=assertion,
                                           body={"resourceType": resource_type, "params": [list(p) for p in params],
                                                 "cursors": cursors}, timeout=QUERY_TIMEOUT)
        except PeerRefused as err:
            raise PeerUnreachable(NATIONAL, str(err)) from None
        if status != 200 or not isinstance(body, dict):
            raise PeerUnreachable(NATIONAL, f"the national node answered {status}: {body}")
        return [r for r in body.get("results") or [] if isinstance(r, dict)]

    # -- national side -------------------------------------------------------------------------------------

    def forward_query(self, requester: Requester, origin: str, origin_assertion: str, resource_type: str,
                      params: list[tuple[str, str]], id_number: str,
                      cursors: dict[str, str] | None) -> list[dict[str, Any]]:
        assert self.index is not None
        if cursors:
            provinces = [p for p in cursors if p != origin]
        else:
            provinces = [p for p in self.index.provinces(self.index.find(id_number)) if p != origin]
        origin_node = self.registry.get(origin)
        origin_jwk = origin_node.jwks["keys"][0] if origin_node else None

        def one(province: str) -> dict[str, Any]:
            node = self.registry.get(province)
            if node is None:
                return {"province": province, "unreachable": f"province {province} is not a registered node"}
            envelope = self.sign_for(node, requester, {"province": origin, "assertion": origin_assertion,
                                                       "jwk": origin_jwk})
            query = list(params) + ([("_cursor", cursors[province])] if cursors and cursors.get(province) else [])
            try:
                status, body = self.peers.call(node, "GET", f"/fhir/{resource_type}", params=query,
                                               requester=envelope, timeout=FORWARD_TIMEOUT)
            except (PeerUnreachable, PeerRefused) as err:
                return {"province": province, "unreachable": str(err)}
            return {"province": province, "status": status, "url": node.url, "bundle": body}

        return list(self._pool.map(one, provinces))

    def forward_nonce(self, province: str, kid: str, nonce: bytes, exp: int) -> bool | None:
        return self.spend_remote(province, kid, nonce, exp)


def _is_card(value: Any) -> bool:
    """A card ID as the national node must answer one: 64 upper-case hexadecimal digits."""
    return isinstance(value, str) and _CARD.fullmatch(value) is not None


def _cards_of(resource: dict[str, Any] | None) -> list[str]:
    """Every card the Patient holds, current or old (merged in, replaced)."""
    return [str(i["value"]) for i in (resource or {}).get("identifier") or []
            if isinstance(i, dict) and i.get("system") == EHC_SYSTEM and isinstance(i.get("value"), str)]


def card_of(resource: dict[str, Any] | None) -> str | None:
    for ident in (resource or {}).get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == EHC_SYSTEM and ident.get("use") != "old":
            return str(ident.get("value"))
    return None
