"""The access decision (docs/auth.md): SMART scopes, the owner of the record, province, Consent, break-the-glass.

The policy decides; it enforces nothing itself. The two gates ask it:
- authenticate: the bearer token → Principal (401 with WWW-Authenticate: Bearer, RFC 6750 §3, when it is
  missing, unknown, expired or revoked; looked up by the hash of its value).
- require: before any data is touched, 403 when no scope allows the interaction on the type at all.
- disclose: may this version of a resource leave (the disclosure gate, app.fhir.gate, asks for every one)?
- admit: may this write happen, judged on the version before and the version after (the change gate,
  Repository.prepare_version, asks for every one, cascades and transaction entries included)?
- restrict_search: the constraints a token's scopes put on a search (patient compartment, granular query), so
  that searches do not fetch what disclose would refuse anyway.

Whose record a resource is comes from one owner function (app.auth.owner, the R4 patient CompartmentDefinition).
Patients always see their own records: access through a patient/ scope is confined to the launch patient's
compartment and needs no consent; resident tokens never change directory data. Access through user/ and system/
scopes to a record of another province needs the patient's active Consent (app.auth.consent), or break-the-glass
(app.auth.breakglass: one named patient, time- and rate-limited, flagged for review). A record whose owner cannot be
determined is sensitive: it never leaves its province. Only the home province changes a record (a registration of a
known resident from elsewhere adds identifiers, nothing more), and only the resident, their proxy, or the home
province's clients write a resident's Consent.
"""

from __future__ import annotations

from typing import Any

from app.auth.breakglass import BreakGlassLedger
from app.auth.compartment import compartment_search, is_directory
from app.auth.consent import covering_consent, find_consents
from app.auth.models import AuthStore, digest, now
from app.auth.owner import Owner, owner_function
from app.auth.scopes import INTERACTION_LETTER, ResourceScope, parse_scopes
from app.core.access import ALLOW, Change, Decision, Principal
from app.core.errors import FhirError, forbidden
from app.search.compile import compile_filter
from app.search.extract import extract_index
from app.search.matcher import resource_matches
from app.search.parser import parse_search

MRN_PREFIX = "urn:ehc:mrn:"
PURPOSE_HEADER = "X-Purpose-Of-Use"
BREAK_GLASS = "ETREAT"
# The purposes of use a client may state (HL7 v3 PurposeOfUse, the codes IHE XUA and SMART deployments use): the
# audit trail records the one stated, so it is one of these, never free text.
PURPOSES = frozenset({"TREAT", "ETREAT", "CAREMGT", "COC", "HPAYMT", "HOPERAT", "HQUALIMP", "HRESCH", "PUBHLTH",
                      "POPHLTH", "HSYSADMIN", "HLEGAL", "PATRQT", "FAMRQT", "PWATRNY", "SYSDEV"})


def stated_purpose(value: str | None, where: str) -> str | None:
    """A stated purpose of use checked against PURPOSES (400 naming `where` otherwise)."""
    if value is None or not value.strip():
        return None
    code = value.strip()
    if code not in PURPOSES:
        shown = code if len(code) <= 40 else code[:40] + "..."
        raise FhirError(400, f"{where} must be an HL7 v3 purpose of use code ({', '.join(sorted(PURPOSES))}), "
                             f"got {shown!r}", expression=where)
    return code


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
        self.owner = owner_function(svc)
        self.break_glass = BreakGlassLedger(svc.repo.db["_break_glass"])
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
        purpose = stated_purpose(_header(PURPOSE_HEADER), PURPOSE_HEADER) or raw.get("purpose")
        if purpose == BREAK_GLASS and not raw.get("break_glass"):
            # Stated by a client not registered for it, ETREAT would be recorded as an emergency access that
            # nobody reviews: the consent rules apply to it as to any read.
            raise forbidden("purpose of use ETREAT (emergency access) is for clients registered for break-the-glass "
                            "(ehc clients add --break-glass)")
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
            issued_at=int(raw.get("issued_at") or 0) or None,
            extra={"break_glass_allowed": bool(raw.get("break_glass")) and purpose == BREAK_GLASS,
                   "account": raw.get("account")},
        )

    # -- scope before data ------------------------------------------------------------------------------

    def require(self, principal: Principal | None, interaction: str, resource_type: str | None) -> None:
        if principal is None:
            raise unauthorized("a bearer token is required", None)
        letter = INTERACTION_LETTER.get(interaction, "r")
        scopes = parse_scopes(" ".join(principal.scopes))
        grants = scopes.granting(resource_type, letter) if resource_type else \
            [g for g in scopes.resource if g.resource_type == "*" and letter in g.perms]
        if not grants and interaction == "history":  # history of one record is a read, of many a search
            grants = scopes.granting(resource_type, "s") if resource_type else \
                [g for g in scopes.resource if g.resource_type == "*" and "s" in g.perms]
        if not grants:
            raise _missing_scope(principal, interaction, resource_type, letter)
        if interaction == "verify" and all(g.context == "patient" for g in grants):
            # verifying would spend other residents' one-time codes; it is for terminals
            raise forbidden("$ehc-verify is for terminals (user/ or system/ scopes); a resident's token "
                            "(patient/ scopes) cannot verify codes")

    # -- the disclosure decision ---------------------------------------------------------------------------

    def disclose(self, principal: Principal | None, resource_type: str, resource: dict[str, Any],
                 province: str | None, letters: str = "rs", focus: str | None = None) -> Decision:
        if principal is None:
            return Decision(False, "a bearer token is required")
        scopes = parse_scopes(" ".join(principal.scopes))
        grants = list(dict.fromkeys(g for letter in letters for g in scopes.granting(resource_type, letter)))
        if not grants:
            return Decision(False, f"insufficient scope: the token grants no access to {resource_type}")
        owner = self.owner(resource_type, resource)
        via = self._grant_for(principal, grants, resource_type, resource, owner)
        if via is None:
            return Decision(False, self._outside(principal, resource_type, grants), patients=owner.patients)
        if via.context == "patient" or owner.directory:
            return Decision(True, patients=owner.patients)
        return self._province_gate(principal, resource_type, owner, province, focus)

    def _grant_for(self, principal: Principal, grants: list[ResourceScope], rtype: str, resource: dict[str, Any],
                   owner: Owner, writing: bool = False) -> ResourceScope | None:
        """The grant that opens `resource`. A patient/ grant reads a record in its patient's compartment (R4: any
        of the record's compartment elements), but writes only one that is no other resident's too: naming
        oneself as an AllergyIntolerance's recorder must not open the chart of its patient."""
        for g in sorted(grants, key=lambda g: (g.context == "patient", bool(g.query))):
            if g.context == "patient" and not (principal.patient and (owner.directory or (
                    owner.patients == {principal.patient} if writing else principal.patient in owner.patients))):
                continue
            if g.query and not self._query_matches(rtype, g.query, resource):
                continue
            return g
        return None

    def _query_matches(self, rtype: str, query: tuple[tuple[str, str], ...], resource: dict[str, Any]) -> bool:
        key = (rtype, query)
        flt = self._filters.get(key)
        if flt is None:
            request = parse_search(rtype, list(query), self.svc.registry, strict=True)
            flt = self._filters[key] = compile_filter(request, self.svc.registry, lambda *_: [])
        return resource_matches(flt, resource, rtype, self.svc.registry)

    def _outside(self, principal: Principal, rtype: str, grants: list[ResourceScope]) -> str:
        names = " ".join(str(g) for g in grants)
        if all(g.context == "patient" for g in grants):
            if not principal.patient:
                return f"the scopes {names} need a patient in the launch context; this token has none"
            return (f"the {rtype} is outside the compartment of Patient/{principal.patient}, the only patient "
                    f"this token ({names}) may access")
        return f"the {rtype} does not match the granular scopes {names}"

    # -- province, consent and break-the-glass ------------------------------------------------------------

    def _province_gate(self, principal: Principal, rtype: str, owner: Owner, province: str | None,
                       focus: str | None) -> Decision:
        node = self.svc.settings.province
        home, mine = province or node, principal.province or node
        if home == mine:
            return Decision(True, patients=owner.patients)
        if not owner.unknown and owner.patients:
            # Every resident the record names must have consented: one patient's Consent does not open a Group,
            # a Communication or an AuditEvent that also names others.
            consents = [self._consent_for(principal, pid, rtype) for pid in sorted(owner.patients)]
            if all(consents):
                return Decision(True, consent=consents[0], patients=owner.patients)
        if (principal.extra.get("break_glass_allowed") and focus and owner.patients == {focus}
                and not owner.unknown and self.break_glass.admit(principal, focus)):
            principal.break_glass = True  # used: the audit trail records it and flags it for review
            return Decision(True, break_glass=True, patients=owner.patients)
        if owner.unknown:
            return Decision(False, f"the {rtype} is a record of province {home} whose patient cannot be "
                                   "determined; it is not disclosed outside its province", patients=owner.patients)
        needs = "the patient's active Consent" if len(owner.patients) < 2 else \
            "an active Consent of every patient it names"
        return Decision(False, f"the {rtype} is a record of province {home}; a client of province {mine} "
                               f"needs {needs} (provision permit, action access, actor "
                               f"Organization/{principal.organization or '?'} or province {mine})",
                        patients=owner.patients)

    def _consent_for(self, principal: Principal, patient_id: str, rtype: str) -> str | None:
        cache = _request_cache()
        consents = cache.get(("consents", patient_id))
        if consents is None:
            consents = cache[("consents", patient_id)] = find_consents(self.svc.repo, patient_id)
        return covering_consent(consents, rtype, principal.organization, principal.province)

    # -- the change decision --------------------------------------------------------------------------------

    def admit(self, principal: Principal | None, change: Change) -> Decision:
        if principal is None:
            return ALLOW  # a write of the server itself (import, merge steps, audit): no caller to judge
        rtype = change.resource_type
        letter = "c" if change.before is None else ("d" if change.after is None else "u")
        if change.registration:
            letter = "c"  # registering a known resident adds identifiers to the golden record
        grants = parse_scopes(" ".join(principal.scopes)).granting(rtype, letter)
        if not grants:
            return Decision(False, str(_missing_scope(principal, _KIND[letter], rtype, letter).diagnostics))
        sides = [(name, res, self.owner(rtype, res)) for name, res in (("before", change.before),
                                                                      ("after", change.after)) if res is not None]
        patients = frozenset(p for _, _, o in sides for p in o.patients)
        patient_only = all(g.context == "patient" for g in grants)
        if patient_only and any(o.directory for _, _, o in sides):
            return Decision(False, f"a resident's token (patient/ scopes) cannot change {rtype}: it is "
                                   "directory data", patients=patients)
        if patient_only and rtype == "Patient" and change.before is not None and change.after is not None and \
                (change.before.get("identifier") or []) != (change.after.get("identifier") or []):
            # Identifiers are issued by the hospitals and authorities that own them, and records elsewhere name
            # the resident by them: a resident who added a record number would be given those records.
            return Decision(False, "a resident's token (patient/ scopes) cannot change a Patient's identifiers; "
                                   "the hospital or authority that issued them does", patients=patients)
        for name, res, owner in sides:
            if self._grant_for(principal, grants, rtype, res, owner, writing=True) is None:
                # "after the change" only to a caller the version before was open to (the before side is judged
                # first): otherwise which side failed would tell whether the record exists.
                moved = " (after the change)" if name == "after" and len(sides) == 2 else ""
                return Decision(False, self._outside(principal, rtype, grants) + moved, patients=patients)
        unseen = self._unseen_binary(principal, rtype, change) or self._foreign_record_number(principal, rtype,
                                                                                                change)
        if unseen:
            return Decision(False, unseen, patients=patients)
        if patient_only and rtype == "Consent" and change.before is not None:
            refusal = self._someone_elses_binding(principal, change.before)
            if refusal:
                return Decision(False, refusal, patients=patients)
        if patient_only:
            return Decision(True, patients=patients)
        node = self.svc.settings.province
        mine = principal.province or node
        if change.before is not None and (change.before_province or node) != mine and not change.registration:
            return Decision(False, f"the {rtype} is a record of province {change.before_province}; only its home "
                                   "province changes it", patients=patients)
        if rtype == "Consent":
            for pid in sorted(patients):
                home = self._home_province(pid)
                if home is not None and home != mine:
                    return Decision(False, "only the resident, their bound proxy, or an authority of the "
                                           f"resident's home province ({home}) may grant or change a Consent",
                                    patients=patients)
        return Decision(True, patients=patients)

    def _unseen_binary(self, principal: Principal, rtype: str, change: Change) -> str | None:
        """A Binary belongs to the records that point at it (owner.py): pointing a record of one's own at a Binary
        one may not read would make it one's own. A new link is allowed only to a Binary the caller may read."""
        param = self.svc.registry.get(rtype, "binary")
        if param is None or change.after is None:
            return None

        def linked(res: dict[str, Any] | None) -> set[str]:
            ix, _ = extract_index({**res, "resourceType": rtype}, self.svc.registry) if res else ({}, {})
            return {v.split("/", 1)[1] for v in ix.get("binary", ()) if isinstance(v, str) and v.startswith("Binary/")}

        for bid in sorted(linked(change.after) - linked(change.before)):
            doc = self.svc.repo.get_doc("Binary", bid)
            if doc is None or doc.get("del") or not doc.get("res"):
                continue  # nothing there to take: the reference check answers for a missing one
            if not self.disclose(principal, "Binary", doc["res"], doc.get("prov"), "r").allowed:
                return (f"the {rtype} points at Binary/{bid}, which this token may not read: a record cannot be "
                        "linked to a document the caller may not see")
        return None

    def _foreign_record_number(self, principal: Principal, rtype: str, change: Change) -> str | None:
        """A hospital record number (`urn:ehc:mrn:<organization id>`) is assigned by that hospital, or by its
        province: records elsewhere may name a patient by it, and whoever adds it to a Patient is given them."""
        if rtype != "Patient" or change.after is None:
            return None

        def numbers(res: dict[str, Any] | None) -> set[tuple[str, str]]:
            return {(str(i.get("system")), str(i.get("value"))) for i in (res or {}).get("identifier") or []
                    if isinstance(i, dict) and str(i.get("system") or "").startswith(MRN_PREFIX)}

        mine = principal.province or self.svc.settings.province
        # A registration finds the resident by the numbers it sends: another hospital's, already on the record,
        # would find them as surely as adding it would (and 200 for a known number, 403 for an unknown one).
        for system, _ in sorted((numbers(change.after) - numbers(change.before)) | numbers(change.offered)):
            org = system[len(MRN_PREFIX):]
            if org == principal.organization:
                continue
            doc = self.svc.repo.get_raw("Organization", org)
            home = (doc.get("prov") or self.svc.settings.province) if doc and not doc.get("del") else None
            if home is not None and home != mine:
                return (f"{system} holds the record numbers of Organization/{org}, a hospital of province {home}: "
                        "only that hospital, or its province, assigns them")
        return None

    def _someone_elses_binding(self, principal: Principal, consent: dict[str, Any]) -> str | None:
        """A Consent that records a binding (一人绑定多人) is ended by the resident it is about, or by the relative it
        binds; a proxy acting for her ends only their own. Otherwise a son acting for his mother would unbind his
        sister, or one parent cut the other off their child."""
        from app.auth.models import Binding
        from app.auth.plugin import auth_state

        account = principal.extra.get("account")
        if not account:  # no resident account behind the token: nobody's proxy
            return None
        store = auth_state(self.svc).store
        for raw in store.collection(Binding).find({"consent": consent.get("id")}):
            if raw.get("account") == account:
                continue  # the caller's own binding
            mine = store.get(Binding, f"{account}|{raw.get('patient')}")
            if mine is not None and mine.relationship != "SELF":  # the caller is another relative's proxy too
                return ("this Consent records the binding of another relative; only the resident it is about, or "
                        "that relative, may change or end it")
        return None

    def _home_province(self, patient_id: str) -> str | None:
        doc = self.svc.repo.get_raw("Patient", patient_id)
        if doc is None:
            return None
        return str(doc.get("prov") or self.svc.settings.province)

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
        comp = compartment_search(self.svc.profiles_dir, resource_type, principal.patient,
                                  set(self.svc.registry.params(resource_type)))
        if comp is not None:
            extra.append(comp)
        elif not is_directory(self.svc.profiles_dir, resource_type):
            raise forbidden(f"{resource_type} cannot be searched with patient/ scopes "
                            "(it has no patient compartment)")
        if all(g.query for g in grants):
            extra += _merged_query(grants)
        return list(params) + extra

    def judges_rows(self, principal: Principal | None, resource_type: str | None) -> bool:
        return True  # every row: scope queries, compartment, province and consent are decided per version

    def finds_residents(self, principal: Principal | None) -> bool:
        """Whether the caller may find a resident by an identifier without seeing the Patient (a chain such as
        `patient.identifier=<ID number>`): a hospital's client, with a user/ or system/ grant to search Patients,
        which the national index tells as much. A resident's token may not: it would tell whose an ID number is."""
        if principal is None:
            return False
        grants = parse_scopes(" ".join(principal.scopes)).granting("Patient", "s")
        return any(g.context != "patient" for g in grants)

    def confined_to(self, principal: Principal | None, resource_type: str) -> str | None:
        if principal is None or not principal.patient:
            return None
        scopes = parse_scopes(" ".join(principal.scopes))
        grants = scopes.granting(resource_type, "r") + scopes.granting(resource_type, "s")
        return principal.patient if grants and all(g.context == "patient" for g in grants) else None


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


_KIND = {"c": "create", "u": "update", "d": "delete"}


__all__ = ["SmartPolicy", "unauthorized"]
