"""The peer nodes this node trusts (collection `fed_nodes`, `_id` = province code).

`add` fetches the peer's public node key from `<its root>/federation/node`, checks that the peer says it is the
province the operator named (and, when given, that its fingerprint is the one the operator expects), stores
its FHIR base, and registers it with the local OAuth server as the Backend Services client "node-NN" (its
JWKS, scopes system/*.rs, province NN): the peer obtains short-lived tokens here with signed client
assertions. `remove` deletes both; a token the peer still holds is refused within a second (policy.py asks the
registry, not the token). A running server reads the registry every second in its federation worker, so no
request waits for it.

Only the national node trusts provinces, and a province node trusts only the national node: calls between
provinces are forwarded through the national node (docs/federation.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from app.auth.models import AuthStore, Client, now
from app.auth.registration import PROVINCES, check_jwks
from app.federation.keys import jwks_fingerprint

NATIONAL = "00"
NODE_SCOPES = "system/*.rs"


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


def _node(d: dict[str, Any]) -> Node:
    return Node(d["_id"], d["url"], d["jwks"], d["fingerprint"], int(d.get("added", 0)))


class NodeError(ValueError):
    pass


class NodeRegistry:
    def __init__(self, db: Database, auth: AuthStore, own_province: str) -> None:
        self.col = db["fed_nodes"]
        self.auth = auth
        self.own = own_province
        self._nodes: dict[str, Node] | None = None

    @property
    def national(self) -> bool:
        return self.own == NATIONAL

    def refresh(self) -> dict[str, Node]:
        """Read the registry now (the federation worker does it every second, off the request path)."""
        found = {d["_id"]: _node(d) for d in self.col.find({})}
        self._nodes = found
        return found

    def nodes(self) -> dict[str, Node]:
        """The trusted nodes as last read: requests never wait for the registry."""
        return self._nodes if self._nodes is not None else self.refresh()

    def get(self, province: str, fresh: bool = False) -> Node | None:
        """The node of a province (fresh: read now)."""
        if fresh:
            d = self.col.find_one({"_id": province})
            return _node(d) if d else None
        return self.nodes().get(province)

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
        self._nodes = None
        return node

    def remove(self, province: str) -> bool:
        removed = self.col.delete_one({"_id": province}).deleted_count > 0
        client = self.auth.get(Client, node_client_id(province))
        if client is not None:
            client.active = False
            self.auth.save(client)
        self._nodes = None
        return removed
