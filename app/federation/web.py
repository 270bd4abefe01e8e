"""Endpoints between nodes (/federation) and the national node's PIXm answer.

GET  /federation/node    public: {province, role, fingerprint, jwks} — what `ehc nodes add` fetches
POST /federation/claim   national, node token: {idNumber, card} -> {card} the resident's nationwide card (409 when
                         card is already another resident's)
POST /federation/index   national, node token: {idNumber, card, patient} -> {card}; the node Patient indexed
                         (without idNumber: a card of a resident without one, known by its ID alone)
POST /federation/withdraw national, node token: {card, patient, stillHeld} -> {held, released, indexed}; the node
                         Patient no longer holds the card (deleted, given another, or its registration refused);
                         stillHeld: another Patient of that node does. released: no node does, the national node
                         cancelled it; the node cancels it too then, or when the index does not know it
POST /federation/query   national, node token + requester assertion: {resourceType, params, cursors}
                         -> {results: [{province, status, url, bundle} | {province, unreachable}]}
GET  /federation/card/C  national, node token: {card, home, patients} when the index knows card C
POST /federation/nonce   node token: {province, kid, nonce, exp} -> {first}; the national node forwards it to
                         the issuing node, which spends it
GET  /fhir/Patient/$ihe-pix at the national node: answered from the national index (card identifier, and each
     node Patient as an absolute reference in targetId); POST with a Parameters body alike (ihe_pix.pix_query).
Errors are OperationOutcomes with the status of the FhirError.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from app.core import fhirjson
from app.core.access import AccessRecord
from app.core.errors import FhirError, bad_request, forbidden, not_found
from app.federation.assertions import HEADER
from app.federation.index import EHC_SYSTEM, ID_SYSTEM, normalise_id
from app.federation.registry import NATIONAL
from app.federation.search import resident_id
from app.fhir.http import query_params, read_json_body
from app.fhir.operations.ihe_pix import pix_query
from app.mpi.documents import mod11_2

bp = Blueprint("federation", __name__, url_prefix="/federation")
_ID_NUMBER = re.compile(r"[0-9]{17}[0-9X]")
_CARD = re.compile(r"[0-9A-F]{64}")
MAX_EXP = 2**37  # seconds since 1970: year 6325, far past any code's expiry and within what datetime can hold


def _svc() -> Any:
    return current_app.extensions["ehc"]


def _fed() -> Any:
    return _svc().extensions["federation"]


def _error(err: FhirError) -> Response:
    resp = jsonify(err.outcome())
    resp.status_code = err.status
    resp.headers.update(err.headers)
    return resp


def _body() -> dict[str, Any]:
    try:
        body = fhirjson.loads(request.get_data())  # the FHIR API's parser: no lone surrogates, no NaN
    except fhirjson.JsonError as err:
        raise bad_request(f"the body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise bad_request(f"{name} is required (a string)", expression=name)
    return value


def _node() -> str:
    """The registered province calling with a node token."""
    policy = _fed().policy
    principal = policy.inner.authenticate(request.headers.get("Authorization"))
    return str(policy.node_of(principal))


def _national_only() -> Any:
    fed = _fed()
    if not fed.national:
        raise FhirError(404, "this endpoint exists at the national node only", code="not-found")
    return fed


@bp.errorhandler(FhirError)
def _on_error(err: FhirError) -> Response:
    return _error(err)


@bp.get("/node")
def node() -> Response:
    fed = _fed()
    return jsonify({"province": fed.province, "role": "national" if fed.national else "province",
                    "fingerprint": fed.key.fingerprint(), "jwks": fed.key.public_jwks()})


def _id_number(body: dict[str, Any]) -> str:
    value = normalise_id(_str(body, "idNumber"))
    if not _ID_NUMBER.fullmatch(value) or mod11_2(value[:17]) != value[17]:
        raise bad_request("idNumber must be a resident ID number (18 characters with a right check character)",
                          expression="idNumber")
    return value


def _card(body: dict[str, Any]) -> str:
    value = _str(body, "card").strip().upper()
    if not _CARD.fullmatch(value):
        raise bad_request("card must be an electronic health card ID (64 hexadecimal digits)", expression="card")
    return value


@bp.post("/claim")
def claim() -> Response:
    fed = _national_only()
    province = _node()
    body = _body()
    card = fed.index.claim(_id_number(body), _card(body), province)
    return jsonify({"card": card})


@bp.post("/index")
def index() -> Response:
    fed = _national_only()
    province = _node()
    body = _body()
    card, ref = _card(body), _patient_ref(fed, province, body)
    if body.get("idNumber") is None:
        return jsonify({"card": fed.index.add_card(card, province, ref), "patient": ref})
    card = fed.index.add(_id_number(body), card, province, ref)
    return jsonify({"card": card, "patient": ref})


@bp.post("/withdraw")
def withdraw() -> Response:
    fed = _national_only()
    province = _node()
    body = _body()
    card = _card(body)
    still_held = body.get("stillHeld", False)
    if not isinstance(still_held, bool):
        raise bad_request("stillHeld must be true or false", expression="stillHeld")
    outcome, indexed = fed.index.withdraw(card, province, _patient_ref(fed, province, body), still_held)
    if outcome == "released":  # published in this node's revocations, so every node refuses the card
        from app.ehc.plugin import card_service

        card_service(_svc()).cards.set_status(card, "cancelled", None, "no node holds the resident any more")
    return jsonify({"held": outcome == "held", "released": outcome == "released", "indexed": indexed})


def _patient_ref(fed: Any, province: str, body: dict[str, Any]) -> str:
    return f"{fed.registry.get(province).url}/Patient/{_str(body, 'patient')}"


@bp.post("/query")
def query() -> Response:
    fed = _national_only()
    svc = _svc()
    principal = fed.policy.authenticate(request.headers.get("Authorization"))
    if principal is None or "via_node" not in principal.extra:
        raise forbidden("only a registered federation node may forward a query")
    body = _body()
    rtype = _str(body, "resourceType")
    if rtype not in svc.resource_types:
        raise bad_request(f"unknown resource type {rtype!r}", expression="resourceType")
    raw = body.get("params")
    if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 for p in raw):
        raise bad_request("params must be a list of [name, value] pairs", expression="params")
    params = [(str(k), str(v)) for k, v in raw if k not in ("_cursor", "_remote")]
    number = resident_id(params, rtype)
    if number is None:
        raise bad_request("a cross-province query names the resident by ID number", expression="params")
    cursors = body.get("cursors") if isinstance(body.get("cursors"), dict) else None
    requester = fed.requester_of(principal)
    origin = str(principal.extra["origin_node"])
    results = fed.forward_query(requester, origin, request.headers.get(HEADER, ""), rtype, params, number, cursors)
    svc.record_access(AccessRecord("search", rtype, [], "0", 200, principal, None,
                                   f"forwarded for node {origin} to " +
                                   (", ".join(f"province {r['province']}" for r in results) or "no node"),
                                   remote_addr=request.remote_addr))
    return jsonify({"results": results})


@bp.get("/card/<card>")
def card(card: str) -> Response:
    """Whether the national index knows a card (for a code shown at a node that does not know the resident)."""
    fed = _national_only()
    _node()
    doc = fed.index.by_card(card)
    if doc is None:
        raise not_found(f"the national index knows no card {card}")
    return jsonify({"card": doc["card"], "home": doc.get("home"), "patients": fed.index.refs(doc)})


@bp.post("/nonce")
def nonce() -> Response:
    fed = _fed()
    caller = _node()
    body = _body()
    province, kid = _str(body, "province"), _str(body, "kid")
    try:
        raw = bytes.fromhex(_str(body, "nonce"))
        exp = int(body.get("exp"))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's 1e400 reads as infinity
        raise bad_request("nonce must be hex and exp an integer", expression="nonce") from None
    if not 0 < exp < MAX_EXP:
        raise bad_request("exp must be a time in seconds since 1970", expression="exp")
    if fed.national and province != NATIONAL:
        if fed.registry.get(province) is None:  # no node to ask: not a passing failure, and not worth a retry
            raise not_found(f"province {province} is not a registered node; its codes cannot be spent here")
        first = fed.forward_nonce(province, kid, raw, exp)
        if first is None:
            raise FhirError(503, f"the issuing node of province {province} is unreachable", code="transient")
        return jsonify({"first": first})
    if province != fed.province or (not fed.national and caller != NATIONAL):
        raise forbidden(f"this node is province {fed.province}; it spends only its own codes")
    from app.ehc.plugin import card_service

    nonces: Any = card_service(_svc()).nonces  # federated: its own codes are spent in the local store
    return jsonify({"first": bool(nonces.use(kid, raw, exp))})


def national_pix() -> Response | None:
    """before_request at the national node: Patient/$ihe-pix from the national index (audited by the audit
    layer's after_request, as every /fhir answer)."""
    if request.method not in ("GET", "POST") or request.path.rstrip("/") != "/fhir/Patient/$ihe-pix":
        return None
    svc = _svc()
    fed = svc.extensions["federation"]
    try:
        principal = svc.policy.authenticate(request.headers.get("Authorization"))
        body = read_json_body(request, svc.settings.max_body_bytes) if request.method == "POST" else None
        system, value, targets = pix_query(request.method, query_params(request), body)  # as every node reads it
        if system not in (ID_SYSTEM, EHC_SYSTEM):
            raise FhirError(400, f"the national index knows residents by {ID_SYSTEM} or {EHC_SYSTEM}; "
                                 f"not {system!r}", code="code-invalid", expression="sourceIdentifier")
        if hasattr(svc.policy, "require"):  # scope before data (the access policy's name for it changed)
            svc.policy.require(principal, "read", "Patient")
        else:
            svc.policy.check(principal, "read", "Patient")
        doc = fed.index.find(value) if system == ID_SYSTEM else fed.index.by_card(value)
        if doc is None:
            raise not_found(f"the national index holds no resident with {system}|{value}")
        out: list[dict[str, Any]] = []
        if system != EHC_SYSTEM and (not targets or EHC_SYSTEM in targets):
            out.append({"name": "targetIdentifier", "valueIdentifier": {"system": EHC_SYSTEM, "value": doc["card"]}})
        for ref in fed.index.refs(doc):
            out.append({"name": "targetId", "valueReference": {"reference": ref["ref"],
                                                               "display": f"province {ref['province']}"}})
        resp = jsonify({"resourceType": "Parameters", "parameter": out})
        resp.mimetype = "application/fhir+json"
        return resp
    except FhirError as err:  # the audit layer's after_request records this answer like any other
        return _error(err)
