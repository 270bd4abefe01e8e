"""The OperationDefinitions of the server's own operations, made from what each operation module declares.

An operation that fully implements a published definition (HL7's Patient-match, IHE's PIXm query) names that
canonical in its OPERATION ("definition") and declares nothing more. Every other one declares an `Operation` under
"operation" (title, description, affectsState, parameters, and the published definition it implements a part of, as
`base`), and its "definition" is CANONICAL_BASE + its id. `operation_definition(code, OPERATION)` builds the R4
OperationDefinition from that and from the OPERATION's levels and resource types, so what is served
(app/fhir/conformance.py), published (fhir_profiles/OperationDefinition, written by
scripts/gen_operation_definitions.py) and routed (app/fhir/routes.py) come from one declaration.

R4 rules the declarations keep (OperationDefinition.affectsState; CapabilityStatement...operation.definition):
a server SHALL accept POST for every operation, and GET when the operation does not affect state and all its
parameters are primitive; naming a published definition claims all of it, so a server that implements a part
defines its own with that one as `base`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import Any

CANONICAL_BASE = "https://ehc.example.cn/fhir/OperationDefinition/"
VERSION = "1.0.0"
DATE = "2026-11-30"
PUBLISHER = "ehc-fhir"
PATIENT_PROFILE = "http://hl7.org/fhir/StructureDefinition/Patient"


@dataclass(frozen=True)
class Param:
    """One OperationDefinition.parameter. `max` "*" for a repeating one; `targets` the profiles a Reference may
    point to."""

    name: str
    use: str  # in | out
    type: str
    min: int = 0
    max: str = "1"
    documentation: str = ""
    targets: tuple[str, ...] = ()

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "use": self.use, "min": self.min, "max": self.max}
        if self.documentation:
            out["documentation"] = self.documentation
        out["type"] = self.type
        if self.targets:
            out["targetProfile"] = list(self.targets)
        return out


@dataclass(frozen=True)
class Operation:
    """What an operation module declares of its own OperationDefinition (the rest comes from its OPERATION)."""

    id: str
    name: str  # a computer-friendly name (opd-0)
    title: str
    description: str
    affects_state: bool
    parameters: tuple[Param, ...] = ()
    base: str | None = None  # the published definition this one implements a part of
    comment: str = ""
    resources: tuple[str, ...] = field(default_factory=tuple)  # default: the OPERATION's types ("*": Resource)

    @property
    def url(self) -> str:
        return CANONICAL_BASE + self.id


def operation_definition(code: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The R4 OperationDefinition of an operation (`code` as invoked: `$code`), or None for one that names a
    published definition of someone else."""
    own: Operation | None = spec.get("operation")
    if own is None:
        return None
    if spec.get("definition") != own.url:
        raise ValueError(f"${code}: its definition must be {own.url}, not {spec.get('definition')}")
    levels = set(spec["levels"])
    types = spec.get("types", ())
    resources = list(own.resources) or (["Resource"] if types == "*" else list(types))
    out: dict[str, Any] = {
        "resourceType": "OperationDefinition",
        "id": own.id,
        "text": {"status": "generated",
                 "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>${escape(code, False)}: '
                        f'{escape(own.title, False)}</p><p>{escape(own.description, False)}</p></div>'},
        "url": own.url,
        "version": VERSION,
        "name": own.name,
        "title": own.title,
        "status": "active",
        "kind": "operation",
        "date": DATE,
        "publisher": PUBLISHER,
        "contact": [{"name": "ehc-fhir maintainers"}],
        "description": own.description,
        "jurisdiction": [{"coding": [{"system": "urn:iso:std:iso:3166", "code": "CN"}]}],
        "affectsState": own.affects_state,
        "code": code,
    }
    if own.comment:
        out["comment"] = own.comment
    if own.base:
        out["base"] = own.base
    if resources:
        out["resource"] = resources
    out.update({"system": "system" in levels, "type": "type" in levels, "instance": "instance" in levels})
    if own.parameters:
        out["parameter"] = [p.to_fhir() for p in own.parameters]
    return out


def operation_definitions(operations: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The OperationDefinitions of the operations that have their own, by id."""
    found = [od for code, spec in operations.items() if (od := operation_definition(code, spec)) is not None]
    return sorted(found, key=lambda od: str(od["id"]))
