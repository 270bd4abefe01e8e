"""Resource validation: the R4B models of fhir.resources (structure, cardinality, datatypes) plus the
rules in fhir_profiles/rules.json (required bindings and elements the models do not check)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from app.core.errors import FhirError, Issue


def _loc_to_expression(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "__root__":
            out += f".{part}"
    return out


class Validator:
    def __init__(self, profiles_dir: Path) -> None:
        path = profiles_dir / "rules.json"
        self.rules: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def issues(self, resource: dict[str, Any], resource_type: str | None = None) -> list[Issue]:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return [Issue("resourceType is missing", "required", expression=["resourceType"])]
        if resource_type and rtype != resource_type:
            return [Issue(f"resourceType is {rtype!r} but the URL says {resource_type!r}", "invalid",
                          expression=["resourceType"])]
        try:
            model = _model(rtype)
        except (KeyError, ValueError, AttributeError):
            return [Issue(f"unknown resource type {rtype!r}", "not-supported", expression=["resourceType"])]
        issues: list[Issue] = []
        try:
            model.model_validate(resource)
        except ValidationError as err:
            for e in err.errors():
                expr = _loc_to_expression(rtype, tuple(e.get("loc", ())))
                msg = e.get("msg", "invalid")
                if e.get("type") == "extra_forbidden":
                    msg = "unknown element"
                issues.append(Issue(f"{expr}: {msg}", "structure" if e.get("type") == "extra_forbidden"
                                    else "value", expression=[expr]))
        issues.extend(self._rules(rtype, resource))
        return issues

    def _rules(self, rtype: str, resource: dict[str, Any]) -> list[Issue]:
        out: list[Issue] = []
        for element, codes in self.rules.get("requiredBindings", {}).get(rtype, {}).items():
            value = resource.get(element)
            if value is not None and value not in codes:
                out.append(Issue(f"{rtype}.{element} must be one of {', '.join(codes)}; got {value!r}",
                                 "code-invalid", expression=[f"{rtype}.{element}"]))
        for element in self.rules.get("requiredElements", {}).get(rtype, []):
            if resource.get(element) in (None, [], ""):
                out.append(Issue(f"{rtype}.{element} is required", "required", expression=[f"{rtype}.{element}"]))
        return out

    def validate(self, resource: dict[str, Any], resource_type: str | None = None) -> None:
        issues = self.issues(resource, resource_type)
        if issues:
            raise FhirError(400, issues[0].diagnostics, issues=issues)


@cache
def _model(rtype: str) -> Any:
    return get_fhir_model_class(rtype)
