"""Domain errors that carry what a FHIR client needs: an HTTP status and an OperationOutcome.

Every layer raises these; the web edge (app.fhir) turns them into responses in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# FHIR issue-type codes (http://hl7.org/fhir/issue-type) used as defaults per HTTP status.
_DEFAULT_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "business-rule",
    500: "exception",
}


@dataclass
class Issue:
    """One OperationOutcome.issue."""

    diagnostics: str
    code: str = "invalid"
    severity: str = "error"
    expression: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


class FhirError(Exception):
    """An error with an HTTP status and one or more OperationOutcome issues."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str | None = None,
        expression: str | list[str] | None = None,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.headers = headers or {}
        # A refusal about a patient's record names that patient here (never in the text): the audit trail
        # records the refusal in the patient's own trail.
        self.patients: list[str] = []
        self.audited = False  # the refusal was recorded already (the router records it once)
        if issues:
            self.issues = issues
        else:
            expr = [expression] if isinstance(expression, str) else list(expression or [])
            self.issues = [Issue(diagnostics, code or _DEFAULT_CODE.get(status, "processing"), "error", expr)]

    @property
    def diagnostics(self) -> str:
        return self.issues[0].diagnostics

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def info_outcome(text: str, code: str = "informational") -> dict[str, Any]:
    return operation_outcome([Issue(text, code, "information")])


# Errors as values, named after the status they stand for (Medplum's badRequest / notFound habit).
def bad_request(msg: str, expression: str | list[str] | None = None, code: str = "invalid") -> FhirError:
    return FhirError(400, msg, code=code, expression=expression)


def not_found(msg: str) -> FhirError:
    return FhirError(404, msg, code="not-found")


def gone(msg: str) -> FhirError:
    return FhirError(410, msg, code="deleted")


def conflict(msg: str, expression: str | list[str] | None = None) -> FhirError:
    return FhirError(409, msg, code="conflict", expression=expression)


def precondition_failed(msg: str) -> FhirError:
    return FhirError(412, msg, code="conflict")


def unprocessable(msg: str, expression: str | list[str] | None = None, code: str = "business-rule") -> FhirError:
    return FhirError(422, msg, code=code, expression=expression)


def forbidden(msg: str, expression: str | list[str] | None = None) -> FhirError:
    return FhirError(403, msg, code="forbidden", expression=expression)
