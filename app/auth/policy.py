"""The access decision (DESIGN §5): SMART scopes, the patient compartment, province and consent.

authenticate: the bearer token → Principal (401 with WWW-Authenticate: Bearer, RFC 6750 §3, when it is
missing, unknown, expired or revoked; looked up by the hash of its value — through a 2-second in-process
cache that a revocation in the same process clears at once; expiry is checked on every request).
check: 403 naming the scope that is missing, or the compartment, or the consent.
restrict_search: the constraints a token's scopes put on a search (patient compartment, granular query).
visible: whether one search result may be shown (scope, compartment, cross-province consent).

Patients always see their own records: access through a patient/ scope is confined to the launch
patient's compartment and needs no consent. Access through user/ and system/ scopes to a record written in
another province needs the patient's active Consent (app.auth.consent) — or break-the-glass: a client
registered for it, asking with purpose of use ETREAT (token request `purpose_of_use`, or the
X-Purpose-Of-Use header), is let through and the principal is flagged (break_glass) for the audit trail.
"""

from __future__ import annotations

from typing import Any

from app.auth.compartment import (
    COMPARTMENT_PARAM,
    DIRECTORY_TYPES,
    binary_context,
    compartment_search,
    record_patients,
)
from app.auth.consent import covering_consent, find_consents
from app.auth.models import AuthStore, digest, now
from app.auth.scopes import INTERACTION_LETTER, ResourceScope, parse_scopes
from app.core.access import Principal
from app.core.errors import FhirError, forbidden
from app.search.compile import compile_filter
from app.search.matcher import matches
from app.search.parser import parse_search

PURPOSE_HEADER = "X-Purpose-Of-Use"
BREAK_GLASS = "ETREAT"


def unauthorized(message: str, error: str | None = "invalid_token") -> FhirError:
    challenge = 'Bearer realm="ehc-fhir"'
    if error:
        challenge += f', error="{error}", error_description="{message}"'
    return FhirError(401, message, code="login", headers={"WWW-Authenticate": challenge})


def _request_cache() -> dict[Any, Any]:
    """Per-request memo (consents, organizations): flask.g inside a request, a fresh dict outside."""
    from flask import g, has_request_context

    if not has_request_context():
        return {}
    cache: dict[Any, Any] | None = getattr(g, "ehc_auth_cache", None)
    if cache is None:
        cache = g.ehc_auth_cache = {}
    return cache


def _header(name: str) -> str | None:
    from flask import has_request_context, request

    return request.headers.get(name) if has_request_context() else None


class SmartPolicy:
    """app.core.access.AccessPolicy for SMART tokens issued by app.auth.server."""

    def __init__(self, svc: Any, store: AuthStore) -> None:
        self.svc = svc
        self.store = store
        self._filters: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}

    # -- authenticate ------------------------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Principal | None:
        if not authorization:
            raise unauthorized("a bearer token is required (Authorization: Bearer <token>)", None)
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized("the Authorization header must be 'Bearer <token>'", "invalid_request")
        raw = self.store.access_token(digest(value.strip()))
        if raw is None or raw.get("kind") != "access":
            raise unauthorized("the access token is not known")
        if raw.get("revoked"):
            raise unauthorized("the access token has been revoked")
        if int(raw.get("expires_at", 0)) <= now():
            raise unauthorized("the access token has expired")
        purpose = _header(PURPOSE_HEADER) or raw.get("purpose")
        return Principal(
            client_id=raw.get("client_id"),
            scopes=(raw.get("scope") or "").split(),
            patient=raw.get("patient"),
            user=raw.get("fhir_user") or (f"account:{raw['account'][:16]}" if raw.get("account") else None),
            organization=raw.get("organization"),
            province=raw.get("province"),
            purpose_of_use=purpose,
            break_glass=False,
            token_id=raw["_id"][:16],
            extra={"break_glass_allowed": bool(raw.get("break_glass")) and purpose == BREAK_GLASS},
        )

    # -- check ---------------------------------------------------------------------------------------------

    def check(self, principal: Principal | None, interaction: str, resource_type: str | None,
              resource: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> str | None:
        if principal is None:
            raise unauthorized("a bearer token is required", None)
        target = stored if stored and not stored.get("del") else None
        letter = INTERACTION_LETTER.get(interaction, "r")
        if interaction == "history" and target is None:
            letter = "s"  # type or system history lists many records
        scopes = parse_scopes(" ".join(principal.scopes))
        grants = scopes.granting(resource_type, letter) if resource_type else \
            [g for g in scopes.resource if g.resource_type == "*" and letter in g.perms]
        if not grants:
            raise _missing_scope(principal, interaction, resource_type, letter)
        docs = [d for d in (target, self._pseudo(resource_type, resource)) if d is not None]
        if not docs:
            if interaction == "history" and not any(g.context != "patient" and not g.query for g in grants):
                raise forbidden(f"history of all {resource_type or 'resources'} needs a user/ or system/ "
                                "scope; patient/ scopes see one patient's records only")
            return None  # a read of something that does not exist: 404 follows
        via = None
        for doc in docs:
            via = self._grant_for(principal, grants, resource_type or "", doc)
            if via is None:
                raise self._outside(principal, resource_type or "", grants, doc)
        if via is None or via.context == "patient" or target is None:
            return None
        allowed, consent = self._province_gate(principal, resource_type or "", target)
        if not allowed:
            raise _no_consent(principal, resource_type or "", target)
        return consent

    def _pseudo(self, resource_type: str | None, resource: dict[str, Any] | None) -> dict[str, Any] | None:
        """A resource about to be written, shaped like a stored document for the compartment checks."""
        if not resource or not resource_type:
            return None
        from app.search.extract import extract_index

        ix, _ = extract_index({**resource, "resourceType": resource_type}, self.svc.registry)
        return {"_id": resource.get("id"), "res": resource, "ix": ix, "prov": None}

    def _grant_for(self, principal: Principal, grants: list[ResourceScope], rtype: str,
                   doc: dict[str, Any]) -> ResourceScope | None:
        for g in sorted(grants, key=lambda g: (g.context == "patient", bool(g.query))):
            if g.context == "patient" and not (principal.patient and self._in_compartment(rtype, doc,
                                                                                         principal.patient)):
                continue
            if g.query and not self._query_matches(rtype, g.query, doc):
                continue
            return g
        return None

    def _in_compartment(self, rtype: str, doc: dict[str, Any], patient_id: str) -> bool:
        if rtype in DIRECTORY_TYPES:
            return True
        return patient_id in self._patients_of(rtype, doc)

    def _patients_of(self, rtype: str, doc: dict[str, Any]) -> list[str]:
        if rtype == "Binary":
            ctx = binary_context(doc)
            if ctx is not None:
                other = self.svc.repo.get_doc(*ctx) if ctx[0] in self.svc.resource_types else None
                return record_patients(ctx[0], other) if other else []
        return record_patients(rtype, doc)

    def _query_matches(self, rtype: str, query: tuple[tuple[str, str], ...], doc: dict[str, Any]) -> bool:
        key = (rtype, query)
        flt = self._filters.get(key)
        if flt is None:
            request = parse_search(rtype, list(query), self.svc.registry, strict=True)
            flt = self._filters[key] = compile_filter(request, self.svc.registry, lambda *_: [])
        return bool(doc.get("ix")) and matches(flt, doc)

    def _outside(self, principal: Principal, rtype: str, grants: list[ResourceScope],
                 doc: dict[str, Any]) -> FhirError:
        names = " ".join(str(g) for g in grants)
        if all(g.context == "patient" for g in grants):
            if not principal.patient:
                return forbidden(f"the scopes {names} need a patient in the launch context; "
                                 "this token has none")
            return forbidden(f"{rtype}/{doc.get('_id') or '(new)'} is outside the compartment of "
                             f"Patient/{principal.patient}, the only patient this token ({names}) may access")
        return forbidden(f"{rtype}/{doc.get('_id') or '(new)'} does not match the granular scopes {names}")

    # -- province and consent ----------------------------------------------------------------------------

    def _province_gate(self, principal: Principal, rtype: str,
                       doc: dict[str, Any]) -> tuple[bool, str | None]:
        written_in = doc.get("prov")
        if not written_in or not principal.province or written_in == principal.province:
            return True, None
        patients = self._patients_of(rtype, doc)
        if not patients:
            return True, None  # not a patient's record (directory data)
        for pid in patients:
            consent = self._consent_for(principal, pid, rtype)
            if consent:
                return True, consent
        if principal.extra.get("break_glass_allowed"):
            principal.break_glass = True  # used: the audit trail records it
            principal.extra.setdefault("break_glass_records", []).append(f"{rtype}/{doc.get('_id')}")
            return True, None
        return False, None

    def _consent_for(self, principal: Principal, patient_id: str, rtype: str) -> str | None:
        cache = _request_cache()
        consents = cache.get(("consents", patient_id))
        if consents is None:
            consents = cache[("consents", patient_id)] = find_consents(self.svc.repo, patient_id)

        def load_org(org_id: str) -> dict[str, Any] | None:
            key = ("org", org_id)
            if key not in cache:
                doc = self.svc.repo.get_doc("Organization", org_id)
                cache[key] = doc.get("res") if doc and not doc.get("del") else None
            found: dict[str, Any] | None = cache[key]
            return found

        return covering_consent(consents, rtype, principal.organization, principal.province, load_org)

    # -- search ----------------------------------------------------------------------------------------------

    def restrict_search(self, principal: Principal | None, resource_type: str,
                        params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if principal is None:
            raise unauthorized("a bearer token is required", None)
        grants = parse_scopes(" ".join(principal.scopes)).granting(resource_type, "s")
        if not grants:
            raise _missing_scope(principal, "search", resource_type, "s")
        broad = [g for g in grants if g.context != "patient"]
        if any(not g.query for g in broad):
            return list(params)
        if broad:
            return list(params) + _merged_query(broad)
        if not principal.patient:
            raise forbidden(f"patient/ scopes need a patient in the launch context to search {resource_type}")
        extra: list[tuple[str, str]] = []
        comp = compartment_search(resource_type, principal.patient)
        if comp is not None:
            extra.append(comp)
        elif resource_type not in DIRECTORY_TYPES:
            raise forbidden(f"{resource_type} cannot be searched with patient/ scopes "
                            "(it has no patient compartment)")
        if all(g.query for g in grants):
            extra += _merged_query(grants)
        return list(params) + extra

    def visible(self, principal: Principal | None, resource_type: str, stored: dict[str, Any]) -> bool:
        if principal is None:
            return False
        scopes = parse_scopes(" ".join(principal.scopes))
        grants = scopes.granting(resource_type, "s") or scopes.granting(resource_type, "r")
        via = self._grant_for(principal, grants, resource_type, stored) if grants else None
        if via is None:
            return False
        if via.context == "patient":
            return True
        return self._province_gate(principal, resource_type, stored)[0]


def _merged_query(grants: list[ResourceScope]) -> list[tuple[str, str]]:
    """One search constraint for several granular scopes (OR), when it can be said in one parameter;
    otherwise none (visible() then filters each result)."""
    queries = {g.query for g in grants}
    if len(queries) == 1:
        return list(next(iter(queries)))
    names = {q[0][0] for q in queries if len(q) == 1}
    if len(names) == 1 and all(len(q) == 1 for q in queries):
        return [(names.pop(), ",".join(sorted(q[0][1] for q in queries)))]
    return []


def _missing_scope(principal: Principal, interaction: str, rtype: str | None, letter: str) -> FhirError:
    what = rtype or "*"
    needed = ", ".join(f"{c}/{what}.{letter}" for c in ("patient", "user", "system"))
    has = " ".join(principal.scopes) or "(none)"
    err = forbidden(f"insufficient scope: {interaction} on {what} needs one of {needed} "
                    f"(or a v1 .read/.write/.* scope); the token grants: {has}")
    err.headers["WWW-Authenticate"] = (f'Bearer realm="ehc-fhir", error="insufficient_scope", '
                                       f'scope="{what}.{letter}"')
    return err


def _no_consent(principal: Principal, rtype: str, doc: dict[str, Any]) -> FhirError:
    return forbidden(f"{rtype}/{doc.get('_id')} was written in province {doc.get('prov')}; a client of "
                     f"province {principal.province} needs the patient's active Consent (provision permit, "
                     f"action access, actor Organization/{principal.organization or '?'} or province "
                     f"{principal.province})")


__all__ = ["SmartPolicy", "unauthorized", "COMPARTMENT_PARAM"]
