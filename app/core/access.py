"""The access contract between the mechanisms that enforce access and the policy that decides it.

Two gates enforce, one policy decides (docs/auth.md):
- the disclosure gate (app.fhir.gate) asks `disclose` about every resource version on its way out;
- the change gate (Repository.prepare_version, app.store) asks `admit` about every write, with before and after;
- the policy (app.auth.policy) answers both with a Decision, from scope, owner, province, Consent and break-glass.
Routes never decide access themselves. Every access, allowed or refused, is reported as an AccessRecord to the
listeners (audit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Principal:
    """Who is calling, as the token says."""

    client_id: str | None = None
    scopes: list[str] = field(default_factory=list)
    patient: str | None = None  # launch context: the patient id the token is bound to
    user: str | None = None  # fhirUser / resident account
    organization: str | None = None
    province: str | None = None
    purpose_of_use: str | None = None  # e.g. ETREAT for break-the-glass
    break_glass: bool = False
    token_id: str | None = None
    issued_at: int | None = None  # unix seconds the token was issued (break-glass is time-limited)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one resource version (disclosure) or one write (change)."""

    allowed: bool
    reason: str = ""  # why not (for the OperationOutcome and the audit trail); never names another's record
    consent: str | None = None  # Consent/<id> relied on
    break_glass: bool = False  # allowed only by break-the-glass: flagged for review
    patients: frozenset[str] = frozenset()  # whose record it is (owner function)


ALLOW = Decision(True)
PROVINCE_SYSTEM = "urn:ehc:province"  # a province as an identifier (GB/T 2260 code): Consent actors, audit agents
REVIEW_NOTE = "break-the-glass access: emergency access without consent, flagged for review"


@dataclass
class Change:
    """One write as the change gate sees it: the version before (None: create) and after (None: delete)."""

    resource_type: str
    before: dict[str, Any] | None  # the resource JSON of the current version
    after: dict[str, Any] | None
    before_province: str | None = None  # where the current version's record lives (its home province)
    registration: bool = False  # the master index turned a create into the addition of identifiers
    offered: dict[str, Any] | None = None  # a registration: the resource the caller sent (what it identifies by)


@dataclass
class AccessRecord:
    """One access for the audit trail."""

    interaction: str  # read, vread, search, create, update, patch, delete, history, operation, verify, ...
    resource_type: str | None
    resource_ids: list[str] = field(default_factory=list)
    outcome: str = "0"  # AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure
    status: int = 200
    principal: Principal | None = None
    query: str | None = None
    description: str | None = None
    consent: str | None = None  # Consent/<id> relied on
    patient_ids: list[str] = field(default_factory=list)
    remote_addr: str | None = None
    withheld: int = 0
    break_glass: bool = False  # some of it was allowed only by break-the-glass: flagged for review


class AccessPolicy(Protocol):
    def authenticate(self, authorization: str | None) -> Principal | None:
        """Resolve the Authorization header; raise FhirError(401) when required and missing/bad."""

    def require(self, principal: Principal | None, interaction: str, resource_type: str | None) -> None:
        """Before any data is touched: raise FhirError(401/403) when no scope allows the interaction at all."""

    def disclose(self, principal: Principal | None, resource_type: str, resource: dict[str, Any],
                 province: str | None, letters: str = "rs", focus: str | None = None) -> Decision:
        """May this version of a resource leave the server to this principal? `province`: the record's home
        province; `letters`: scope letters that would allow it; `focus`: the one patient the request names (the
        only patient break-the-glass may reach)."""

    def admit(self, principal: Principal | None, change: Change) -> Decision:
        """May this principal make this change (create / update / patch / delete / merge / cascade)?"""

    def restrict_search(self, principal: Principal | None, resource_type: str,
                        params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Add the constraints a principal's scopes impose (patient compartment, granular scopes)."""

    def judges_rows(self, principal: Principal | None, resource_type: str | None) -> bool:
        """Whether search rows need a disclose() each (False: every row the restricted search matches may go)."""

    def confined_to(self, principal: Principal | None, resource_type: str) -> str | None:
        """The one patient whose records are all of this type the principal may see (a resident's token), or
        None when it may see more (a hospital, a terminal, auth off)."""

    def finds_residents(self, principal: Principal | None) -> bool:
        """Whether the principal may find a resident by an identifier without seeing the Patient (a hospital)."""


class OpenPolicy:
    """No authentication: used only when EHC_AUTH_REQUIRED is off (tests of the core, benchmarks)."""

    def authenticate(self, authorization: str | None) -> Principal | None:
        return None

    def require(self, principal: Principal | None, interaction: str, resource_type: str | None) -> None:
        return None

    def disclose(self, principal: Principal | None, resource_type: str, resource: dict[str, Any],
                 province: str | None, letters: str = "rs", focus: str | None = None) -> Decision:
        return ALLOW

    def admit(self, principal: Principal | None, change: Change) -> Decision:
        return ALLOW

    def restrict_search(self, principal: Principal | None, resource_type: str,
                        params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return params

    def judges_rows(self, principal: Principal | None, resource_type: str | None) -> bool:
        return False

    def confined_to(self, principal: Principal | None, resource_type: str) -> str | None:
        return None

    def finds_residents(self, principal: Principal | None) -> bool:
        return True


AccessListener = Callable[[AccessRecord], None]
