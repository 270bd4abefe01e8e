"""One card nationwide at the QR terminal: keys and revocations of every province, one-time codes across nodes.

- The national node keeps the union of every registered province's published card keys (`/ehc/keys`) and
  revocations (`/ehc/revocations`), fetched from each province every REFRESH seconds, and publishes it at its
  own /ehc/keys and /ehc/revocations beside its own.
- A province node fetches that union from the national node every REFRESH seconds, so it verifies codes
  issued at any node offline, and sees a card suspended at its home node within two periods.
- A one-time (dynamic) code signed by another province's key is spent at its issuing node (through the
  national node): a code used at one node is `replayed` at every other. When the issuing node cannot be
  reached, the code is spent locally only (and the answer says nothing else: the code lives 300 s at most).

Stored in collections `fed_keys` (`_id` = kid) and `fed_revocations` (`_id` = card ID), so every worker
process sees one union; each process re-reads them at most every CACHE seconds.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymongo import ReplaceOne
from pymongo.database import Database

from app.crypto import SM2PublicKey

REFRESH = 10.0
CACHE = 2.0


@dataclass(frozen=True)
class ForeignKey:
    """A card key of another node, as published: enough to verify (app.ehc verify reads kid, public, exp)."""

    kid: str
    public: SM2PublicKey
    nbf: int
    exp: int
    province: str
    jwk: dict[str, Any]
    retired: int | None = None  # /ehc/keys publishes no retirement: only the issuing node knows it (as SigningKey)


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def foreign_key(jwk: dict[str, Any]) -> ForeignKey | None:
    try:
        x, y = _b64(str(jwk["x"])), _b64(str(jwk["y"]))
        if jwk.get("crv") != "SM2" or len(x) != 32 or len(y) != 32:
            return None
        return ForeignKey(str(jwk["kid"]), SM2PublicKey.from_xy(x, y), int(jwk.get("nbf", 0)), int(jwk["exp"]),
                          str(jwk.get("province", "")), dict(jwk))
    except (KeyError, ValueError, TypeError):
        return None


class CardUnion:
    def __init__(self, db: Database, own_province: str) -> None:
        self.keys_col = db["fed_keys"]
        self.revoked_col = db["fed_revocations"]
        self.own = own_province
        self._keys: dict[str, ForeignKey] = {}
        self._revoked: dict[str, dict[str, Any]] = {}
        self._loaded = 0.0
        self._lock = threading.Lock()

    # -- writing (the refresher) -------------------------------------------------------------------------

    def replace(self, province: str | None, keys: list[dict[str, Any]], cards: list[dict[str, Any]]) -> None:
        """Store what one source published. province: the source's province (a province's own list, at the
        national node), or None for the national union (at a province node: everything but our own keys)."""
        now = int(time.time())
        kept = []
        for jwk in keys:
            fk = foreign_key(jwk)
            if fk is None or fk.exp <= now or fk.province == self.own:
                continue
            if province is not None and fk.province != province:
                continue  # a province publishes its own keys only
            if not fk.kid.startswith(fk.province):
                continue  # a kid begins with its province's code: one province cannot take another's kid
            kept.append(fk)
        scope = {"src": province or "00"}
        if kept:
            self.keys_col.bulk_write([ReplaceOne({"_id": k.kid}, {"jwk": k.jwk, "province": k.province,
                                                                  **scope}, upsert=True) for k in kept])
        self.keys_col.delete_many({**scope, "_id": {"$nin": [k.kid for k in kept]}})
        rows = [c for c in cards if isinstance(c, dict) and isinstance(c.get("ehcId"), str)
                and c.get("status") in ("suspended", "cancelled") and c.get("province") != self.own]
        if rows:
            self.revoked_col.bulk_write([ReplaceOne({"_id": c["ehcId"]},
                                                    {"status": c["status"], "since": c.get("since"),
                                                     "province": c.get("province") or province, **scope},
                                                    upsert=True) for c in rows])
        self.revoked_col.delete_many({**scope, "_id": {"$nin": [c["ehcId"] for c in rows]}})
        self._loaded = 0.0

    def forget_keys(self, sources: list[str]) -> None:
        """Drop the keys of every source but these (the nodes still trusted)."""
        if self.keys_col.delete_many({"src": {"$nin": sources}}).deleted_count:
            self._loaded = 0.0

    # -- reading -----------------------------------------------------------------------------------------

    def _load(self) -> None:
        if time.monotonic() - self._loaded < CACHE:
            return
        keys = {}
        for doc in self.keys_col.find({}):
            fk = foreign_key(doc.get("jwk") or {})
            if fk is not None:
                keys[fk.kid] = fk
        revoked = {d["_id"]: {"ehcId": d["_id"], "status": d["status"], "since": d.get("since"),
                              "province": d.get("province")} for d in self.revoked_col.find({})}
        with self._lock:
            self._keys, self._revoked, self._loaded = keys, revoked, time.monotonic()

    def key(self, kid: str) -> ForeignKey | None:
        self._load()
        return self._keys.get(kid)

    def published(self) -> list[dict[str, Any]]:
        self._load()
        now = int(time.time())
        return [k.jwk for k in sorted(self._keys.values(), key=lambda k: (k.province, -k.nbf)) if k.exp > now]

    def status(self, card_id: str) -> str | None:
        self._load()
        hit = self._revoked.get(card_id)
        return str(hit["status"]) if hit else None

    def revocations(self) -> list[dict[str, Any]]:
        self._load()
        return [dict(v) for _, v in sorted(self._revoked.items())]


class FederatedSigning:
    """app.ehc SigningKeys, plus the other nodes' keys for verification (and, at the national node, for
    publication)."""

    def __init__(self, local: Any, union: CardUnion, publish_union: bool) -> None:
        self.local, self.union, self.publish_union = local, union, publish_union

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def get(self, kid: str) -> Any:
        return self.local.get(kid) or self.union.key(kid)

    def published(self, now: int | None = None) -> list[dict[str, Any]]:
        own: list[dict[str, Any]] = self.local.published(now)
        return own + self.union.published() if self.publish_union else own


class FederatedCards:
    """app.ehc CardStore, plus the revocations of the other nodes; at a province node whose national node is
    trusted, a deleted Patient's cards are withdrawn from the national index rather than cancelled here."""

    def __init__(self, local: Any, union: CardUnion, publish_union: bool,
                 withdraw: Callable[[dict[str, Any]], bool] | None = None,
                 federated: Callable[[], bool] | None = None) -> None:
        self.local, self.union, self.publish_union = local, union, publish_union
        self.withdraw = withdraw
        self.federated = federated

    def cancel_all(self, resource: dict[str, Any] | None, reason: str) -> None:
        """A card is nationwide: another node may hold the same resident. The outbox asks the national node, which
        cancels the card only when no node holds it any more (Federation.deliver cancels it here then)."""
        if resource is not None and self.withdraw is not None and self.withdraw(resource):
            self.local.release(resource)
        else:
            self.local.cancel_all(resource, reason)

    def sync(self, patient_id: str, resource: dict[str, Any] | None, previous: dict[str, Any] | None) -> None:
        """A formal card retired by a corrected ID number may be another node's resident's too: released here,
        withdrawn by the outbox (plugin.PatientHooks), and cancelled when no node holds it, as for a deletion."""
        self.local.sync(patient_id, resource, previous,
                        cancel_retired=not (self.federated is not None and self.federated()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def status(self, card_id: str) -> str:
        own = str(self.local.status(card_id))
        if own != "active":
            return own
        return self.union.status(card_id) or "active"

    def revocations(self) -> list[dict[str, Any]]:
        own: list[dict[str, Any]] = self.local.revocations()
        if not self.publish_union:
            return own
        seen = {c["ehcId"] for c in own}
        return own + [c for c in self.union.revocations() if c["ehcId"] not in seen]


def verify_nationwide(verify: Any, card_known: Any, nonces: Any) -> Any:
    """app.ehc CardService.verify, for a card this node does not know: valid when the national index knows it
    (the resident is registered at another node), the one-time code spent like any other."""
    from app.ehc.token import TokenMalformed, parse_token

    def verified(token: str, now: int | None = None) -> Any:
        out = verify(token, now)
        if out.reason != "unknown-card" or not out.ehc_id or not card_known(out.ehc_id):
            return out
        out.valid, out.reason = True, None
        if out.token_type == "dynamic":
            try:
                parsed = parse_token(token)
            except TokenMalformed:
                return out
            if not nonces.use(parsed.kid, parsed.claims.nonce, parsed.claims.exp):
                out.valid, out.reason = False, "replayed"
        elif out.token_type in ("static", "legacy-static"):
            out.requires_confirmation = True
        return out

    return verified


class FederatedNonces:
    """app.ehc NonceStore; a dynamic code of another province is spent at its issuing node."""

    def __init__(self, local: Any, union: CardUnion, spend_remote: Any) -> None:
        self.local, self.union, self.spend_remote = local, union, spend_remote

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    def use(self, kid: str, nonce: bytes, exp: int) -> bool:
        foreign = self.union.key(kid)
        if foreign is not None:
            first = self.spend_remote(foreign.province, kid, nonce, exp)
            if first is False:
                self.local.use(kid, nonce, exp)
                return False
        return bool(self.local.use(kid, nonce, exp))
