"""The search parameters the server supports, from fhir_profiles/SearchParameter (FHIR R4 SearchParameter).

One SearchParamDef per (resource type, code), with the expression cut down to the branches for that
resource type. Parameters based on Resource (_id, _lastUpdated, _tag, _profile, _security, _source) are
given to every resource type. The resource types themselves come from the generated Bundle
(scripts/gen_search_parameters.py), so adding one is a matter of data. A token parameter whose values are all
`code`s bound to one code system gets that system (`system`) from token-systems.json
(scripts/gen_token_systems.py): R4 implies it (search.html#token), app/search/compilers/token.py applies it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.search.fhirpath import Evaluator, compile_expression, restrict_to_type

RESOURCE_TYPES_URL = "urn:ehc:search:resource-types"
TOKEN_SYSTEMS = "token-systems.json"  # scripts/gen_token_systems.py
SUPPORTED_TYPES = frozenset({"token", "string", "date", "reference", "quantity", "number", "uri"})
# A code becomes part of a MongoDB field path ("ix.<code>"): nothing but letters, digits, '-' and '_'.
CODE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
RESOURCE_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]*$")


@dataclass
class SearchParamDef:
    """One search parameter as it applies to one resource type."""

    code: str
    type: str
    expression: str
    base: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    modifiers: list[str] = field(default_factory=list)
    comparators: list[str] = field(default_factory=list)
    multiple_or: bool = True
    multiple_and: bool = True
    url: str = ""
    name: str = ""
    # token: the code system every value implies (a `code` element with a required binding to one system), or ""
    system: str = ""

    def evaluator(self) -> Evaluator:
        """The compiled expression (cached across parameters sharing one expression)."""
        return compile_expression(self.expression)


def load_compartment(profiles_dir: Path) -> dict[str, list[str]]:
    """resource type -> compartment search parameter codes, from the official CompartmentDefinition/patient."""
    doc = json.loads((profiles_dir / "CompartmentDefinition" / "patient.json").read_text(encoding="utf-8"))
    return {r["code"]: list(r["param"]) for r in doc.get("resource", []) if r.get("param")}


class SearchRegistry:
    """Search parameters by resource type and code."""

    def __init__(self, params: Iterable[SearchParamDef], resource_types: Iterable[str],
                 compartment: dict[str, list[str]] | None = None) -> None:
        self._types = list(dict.fromkeys(resource_types))
        # resource type -> the parameters that place it in a patient's compartment (CompartmentDefinition/patient)
        self.compartment = compartment or {}
        self._by_type: dict[str, dict[str, SearchParamDef]] = {t: {} for t in self._types}
        for p in params:
            if not CODE_RE.match(p.code):
                raise ValueError(f"search parameter code {p.code!r} is not a safe field name")
            for t in p.base:
                if t in self._by_type:
                    self._by_type[t][p.code] = p

    @classmethod
    def from_profiles(
        cls, profiles_dir: str | Path, resource_types: Iterable[str] | None = None
    ) -> SearchRegistry:
        """Load the SearchParameters (or Bundles of them) in `profiles_dir`/SearchParameter."""
        root = Path(profiles_dir)
        folder = root / "SearchParameter" if (root / "SearchParameter").is_dir() else root
        raw: list[dict[str, Any]] = []
        declared: list[str] = []
        for path in sorted(folder.glob("*.json")):
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("resourceType") == "Bundle":
                for ext in doc.get("meta", {}).get("extension", []):
                    if ext.get("url") == RESOURCE_TYPES_URL:
                        declared.append(ext["valueCode"])
                raw.extend(e["resource"] for e in doc.get("entry", []) if "resource" in e)
            elif doc.get("resourceType") == "SearchParameter":
                raw.append(doc)
        types = list(resource_types) if resource_types is not None else declared
        if not types:  # no declared list: every base named by a parameter
            types = sorted({b for sp in raw for b in sp.get("base", [])} - {"Resource", "DomainResource"})
        definition = root / "CompartmentDefinition" / "patient.json"
        defs = _defs_for(raw, types)
        table = root / TOKEN_SYSTEMS
        if table.is_file():
            systems: dict[str, dict[str, str]] = json.loads(table.read_text(encoding="utf-8"))["systems"]
            for d in defs:
                if d.type == "token":
                    d.system = systems.get(d.base[0], {}).get(d.code, "")
        return cls(defs, types, load_compartment(root) if definition.exists() else None)

    def resource_types(self) -> list[str]:
        return list(self._types)

    def get(self, resource_type: str, code: str) -> SearchParamDef | None:
        return self._by_type.get(resource_type, {}).get(code)

    def params(self, resource_type: str) -> dict[str, SearchParamDef]:
        return dict(self._by_type.get(resource_type, {}))


def _defs_for(raw: list[dict[str, Any]], types: list[str]) -> list[SearchParamDef]:
    out: list[SearchParamDef] = []
    for sp in raw:
        if sp.get("type") not in SUPPORTED_TYPES or not sp.get("expression"):
            continue
        bases = sp.get("base", [])
        applies = types if "Resource" in bases else [t for t in bases if t in types]
        for t in applies:
            expr = restrict_to_type(sp["expression"], t)
            if not expr:
                continue
            out.append(
                SearchParamDef(
                    code=sp["code"],
                    type=sp["type"],
                    expression=expr,
                    base=[t],
                    target=list(sp.get("target", [])),
                    modifiers=list(sp.get("modifier", [])),
                    comparators=list(sp.get("comparator", [])),
                    multiple_or=sp.get("multipleOr", True),
                    multiple_and=sp.get("multipleAnd", True),
                    url=sp.get("url", ""),
                    name=sp.get("name", ""),
                )
            )
    return out
