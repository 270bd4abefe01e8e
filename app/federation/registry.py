"""The peer nodes this node trusts (collection `fed_nodes`, `_id` = province code).

`add` fetches the peer's public node key from `<its root>/federation/node`, checks that the peer says it is the
province the operator named (and, when given, that its fingerprint is the one the operator expects), stores
its FHIR base, and registers it with the local OAuth server as the Backend Services client "node-NN" (its
JWKS, scopes system/*.rs, province NN): the peer obtains short-lived tokens here with signed client
assertions. `remove` deletes both; a token the peer still holds is refused at once (policy.py asks the
registry, not the token).

Only the national node trusts provinces, and a province node trusts only the national node: calls between
provinces are forwarded through the national node (docs/federation.md says why).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from app.auth.models import AuthStore, Client, now
from app.auth.registration import PROVINCES, check_jwks
from app.federation.keys import jwks_fingerprint

NATIONAL = "00"
NODE_SCOPES = "system/*.rs"
CACHE_SECONDS = 2.0


def node_client_id(province: str) -> str:
    return f"node-{province}"


def province_of_client(client_id: str | None) -> str | None:
    if client_id and client_id.startswith("node-") and client_id[5:] in PROVINCES:
        return client_id[5:]
    return None


def fhir_root(base: str) -> str:
    """The server root of a FHIR base URL (where /oauth and /federation live)."""
    base = base.rstrip("/")
    return base[: -len("/fhir")] if base.endswith("/fhir") else base


@dataclass(frozen=True)
class Node:
    province: str
    url: str  # its FHIR base
    jwks: dict[str, Any]
    fingerprint: str
    added: int

    @property
    def root(self) -> str:
        return fhir_root(self.url)

    def to_json(self) -> dict[str, Any]:
        return {"province": self.province, "url": self.url, "fingerprint": self.fingerprint,
                "added": self.added, "client_id": node_client_id(self.province)}


class NodeError(ValueError):
    pass


class NodeRegistry:
    def __init__(self, db: Database, auth: AuthStore, own_province: str) -> None:
        self.col = db["fed_nodes"]
        self.auth = auth
        self.own = own_province
        self._cache: tuple[float, dict[str, Node]] = (0.0, {})
        self._lock = threading.Lock()

    @property
    def national(self) -> bool:
        return self.own == NATIONAL

    def nodes(self) -> dict[str, Node]:
        expires, nodes = self._cache
        if expires > time.monotonic():
            return nodes
        found = {d["_id"]: Node(d["_id"], d["url"], d["jwks"], d["fingerprint"], int(d.get("added", 0)))
                 for d in self.col.find({})}
        with self._lock:
            self._cache = (time.monotonic() + CACHE_SECONDS, found)
        return found

    def get(self, province: str, fresh: bool = False) -> Node | None:
        """The node of a province: from the 2-second cache when it is there (a removal takes effect within 2 s),
        else read now (a node added a moment ago, by `ehc nodes add` in another process, is found at once)."""
        node = None if fresh else self.nodes().get(province)
        if node is None:
            d = self.col.find_one({"_id": province})
            node = Node(d["_id"], d["url"], d["jwks"], d["fingerprint"], int(d.get("added", 0))) if d else None
        return node

    def check_peer(self, province: str, url: str) -> None:
        if province not in PROVINCES:
            raise NodeError(f"--province must be a GB/T 2260 province code or 00; got {province!r}")
        if province == self.own:
            raise NodeError(f"this node is province {self.own}; it does not add itself")
        if not self.national and province != NATIONAL:
            raise NodeError("a province node trusts only the national node (--province 00); calls to other "
                            "provinces are forwarded through it")
        if not url.startswith(("http://", "https://")):
            raise NodeError(f"--url must be the node's FHIR base (http:// or https://); got {url!r}")

    def add(self, province: str, url: str, info: dict[str, Any], expect_fingerprint: str | None = None) -> Node:
        """Trust the peer described by `info` (what its /federation/node answered)."""
        self.check_peer(province, url)
        if info.get("province") != province:
            raise NodeError(f"the node at {url} says it is province {info.get('province')!r}, not {province}")
        try:
            jwks = check_jwks(info.get("jwks") or {})
            fingerprint = jwks_fingerprint(jwks)
        except (ValueError, KeyError, TypeError) as err:
            raise NodeError(f"the node at {url} published no usable key: {err}") from None
        if expect_fingerprint and expect_fingerprint != fingerprint:
            raise NodeError(f"fingerprint mismatch: the node at {url} has key {fingerprint}, "
                            f"expected {expect_fingerprint}; nothing was added")
        node = Node(province, url.rstrip("/"), jwks, fingerprint, now())
        self.col.replace_one({"_id": province}, {"url": node.url, "jwks": jwks, "fingerprint": fingerprint,
                                                 "added": node.added}, upsert=True)
        client = Client(client_id=node_client_id(province), name=f"federation node {province}", public=False,
                        scopes=NODE_SCOPES, redirect_uris=[], jwks=jwks, province=province, active=True)
        self.auth.save(client)
        self._cache = (0.0, {})
        return node

    def remove(self, province: str) -> bool:
        removed = self.col.delete_one({"_id": province}).deleted_count > 0
        client = self.auth.get(Client, node_client_id(province))
        if client is not None:
            client.active = False
            self.auth.save(client)
        self._cache = (0.0, {})
        return removed
