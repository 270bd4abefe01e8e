"""The access contract between the web edge (app.fhir) and the access decision (app.auth).

Routes never decide access themselves: they ask the policy, with (principal, interaction, resource).
Every access, allowed or refused, is reported as an AccessRecord to the listeners (audit).
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
    extra: dict[str, Any] = field(default_factory=dict)


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


class AccessPolicy(Protocol):
    def authenticate(self, authorization: str | None) -> Principal | None:
        """Resolve the Authorization header; raise FhirError(401) when required and missing/bad."""

    def check(self, principal: Principal | None, interaction: str, resource_type: str | None,
              resource: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> str | None:
        """Raise FhirError(403) when not allowed; return the Consent reference relied on, if any."""

    def restrict_search(self, principal: Principal | None, resource_type: str,
                        params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Add the constraints a principal's scopes impose (patient compartment, granular scopes)."""

    def visible(self, principal: Principal | None, resource_type: str, stored: dict[str, Any]) -> bool:
        """Whether a search result may be shown (cross-province consent); withheld ones are counted."""


class OpenPolicy:
    """No authentication: used only when EHC_AUTH_REQUIRED is off (tests of the core, benchmarks)."""

    def authenticate(self, authorization: str | None) -> Principal | None:
        return None

    def check(self, principal: Principal | None, interaction: str, resource_type: str | None,
              resource: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> str | None:
        return None

    def restrict_search(self, principal: Principal | None, resource_type: str,
                        params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return params

    def visible(self, principal: Principal | None, resource_type: str, stored: dict[str, Any]) -> bool:
        return True


AccessListener = Callable[[AccessRecord], None]
