"""The authenticate hook: a request from a peer node becomes the ORIGINAL requester's Principal.

FederatedPolicy wraps the access policy (app.auth.policy.SmartPolicy) and changes only authenticate:

- a bearer token of anyone but a peer node: unchanged;
- a token of "node-NN": NN must still be a registered node (a removed node is refused within a second, whatever
  tokens it holds), the request must carry a requester assertion (X-EHC-Requester) signed by NN's key,
  addressed to this node, live, with a jti never seen before (replays refused); when NN is the national node
  forwarding a province's request, the origin's own assertion inside must verify too; and the requester's
  province must be the origin node's province (a node speaks for its own clients only).
  The result is a Principal with the requester's client, organization, province, purpose of use and its
  user/ and system/ scopes, flagged extra["via_node"] (and extra["origin_node"]) for the audit trail.

check, restrict_search and visible are the wrapped policy's: the disclosure gate decides exactly as for a
local client of that province. A peer node may only read (GET); anything else is refused with 403.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from app.core.access import Principal
from app.core.errors import FhirError, forbidden
from app.federation.assertions import HEADER, AssertionInvalid, Requester, verify, verify_origin
from app.federation.registry import NATIONAL, NodeRegistry, province_of_client


def unauthorized(message: str) -> FhirError:
    return FhirError(401, message, code="login",
                     headers={"WWW-Authenticate": f'Bearer realm="ehc-fhir", error="invalid_token", '
                                                  f'error_description="{message}"'})


class ReplayGuard:
    """Each assertion jti once (collection fed_jti, `_id` = issuer|jti, kept until the assertion expires)."""

    def __init__(self, db: Database) -> None:
        self.col = db["fed_jti"]
        self._purged = 0.0

    def first_use(self, issuer: str, jti: str, exp: int) -> bool:
        now = datetime.now(UTC).replace(tzinfo=None)
        try:
            self.col.insert_one({"_id": f"{issuer}|{jti}",
                                 "exp": datetime.fromtimestamp(exp + 60, UTC).replace(tzinfo=None)})
        except DuplicateKeyError:
            return False
        if now.timestamp() - self._purged > 600:
            self._purged = now.timestamp()
            self.col.delete_many({"exp": {"$lt": now}})
        return True


class FederatedPolicy:
    def __init__(self, inner: Any, registry: NodeRegistry, replay: ReplayGuard) -> None:
        self.inner = inner
        self.registry = registry
        self.replay = replay

    def __getattr__(self, name: str) -> Any:  # check, restrict_search, visible and anything added later
        return getattr(self.inner, name)

    def authenticate(self, authorization: str | None) -> Principal | None:
        principal = self.inner.authenticate(authorization)
        if principal is None or province_of_client(principal.client_id) is None:
            return principal
        from flask import g, has_request_context, request

        if not has_request_context():
            return principal
        memo = getattr(g, "ehc_federation_principal", None)
        if memo is not None and memo[0] == authorization:
            return memo[1]  # once per request: the audit layer and the web edge both authenticate
        if request.method != "GET" and request.path.startswith("/fhir"):
            raise forbidden("a peer node may only read and search (GET) through the FHIR API")
        found = self.requester_principal(principal, request.headers.get(HEADER), _audiences())
        g.ehc_federation_principal = (authorization, found)
        return found

    def node_of(self, principal: Principal | None) -> str:
        """The registered province of a node's token (401 otherwise): for the /federation endpoints."""
        province = province_of_client(principal.client_id if principal else None)
        if province is None:
            raise FhirError(403, "only a registered federation node may call this endpoint", code="forbidden")
        if self.registry.get(province) is None:
            raise unauthorized(f"node {province} is not registered at this node (ehc nodes add)")
        return province

    def verify_requester(self, node_province: str, assertion: str | None,
                         audiences: set[str]) -> tuple[Requester, str, str]:
        """(requester, origin province, jti) of a requester assertion sent by a registered node."""
        node = self.registry.get(node_province)
        if node is None:
            raise unauthorized(f"node {node_province} is not registered at this node (ehc nodes add)")
        if not assertion:
            raise unauthorized(f"a call from node {node_province} needs a requester assertion ({HEADER})")
        try:
            claims = verify(assertion, node.jwks, f"node-{node_province}", audiences)
            origin = node_province
            if node_province == NATIONAL and "ehc_origin" in claims:
                origin, inner = verify_origin(claims, audiences | _national_audiences(self.registry))
                if not self.replay.first_use(f"node-{origin}", str(inner["jti"]), int(inner["exp"])):
                    raise AssertionInvalid("the origin's requester assertion was used before (replay)")
            requester = Requester.from_json(claims.get("ehc_req"))
        except AssertionInvalid as err:
            raise unauthorized(str(err)) from None
        if not self.replay.first_use(f"node-{node_province}", str(claims["jti"]), int(claims["exp"])):
            raise unauthorized("the requester assertion was used before (replay)")
        if requester.province != origin:
            raise forbidden(f"node {origin} asserted a requester of province {requester.province}; a node "
                            "speaks only for its own province's clients")
        return requester, origin, str(claims["jti"])

    def requester_principal(self, node: Principal, assertion: str | None, audiences: set[str]) -> Principal:
        node_province = self.node_of(node)
        requester, origin, jti = self.verify_requester(node_province, assertion, audiences)
        scopes = [s for s in requester.scopes if s.startswith(("user/", "system/"))]
        via = f"node-{node_province}" + (f" for node-{origin}" if origin != node_province else "")
        return Principal(client_id=requester.client_id, scopes=scopes, organization=requester.organization,
                         province=requester.province, purpose_of_use=requester.purpose,
                         token_id=f"{via}, requester of province {requester.province}, assertion {jti[:12]}",
                         extra={"via_node": node_province, "origin_node": origin, "requester_assertion": jti,
                                "node_token": node.token_id})


def _audiences() -> set[str]:
    from flask import current_app, request

    svc = current_app.extensions["ehc"]
    out = {request.host_url.rstrip("/") + "/fhir"}
    if svc.settings.base_url:
        out.add(svc.settings.base_url.rstrip("/"))
    return out


def _national_audiences(registry: NodeRegistry) -> set[str]:
    """The origin addressed its assertion to the national node (its FHIR base as registered here)."""
    node = registry.get(NATIONAL)
    return {node.url} if node else set()
