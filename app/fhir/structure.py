"""The R4 StructureDefinitions as the validator and the XML codec use them.

Loaded once from fhir_profiles/structure-table.json, which scripts/gen_structure_table.py generates from
the official definitions: for every resource, data type and backbone element, its elements in definition
order with their types, cardinality, choice ([x]) groups and required code bindings.
No Flask and no I/O beyond reading the table.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

TABLE = "structure-table.json"


@dataclass(frozen=True, slots=True)
class ElementDef:
    """One element as it appears in JSON (a choice contributes one ElementDef per type: valueQuantity ...)."""

    name: str
    type: str
    min: int
    max: int  # -1: unbounded
    choice: str | None = None  # the choice group ("value" for value[x])
    attr: bool = False  # an XML attribute (Element.id, Extension.url)
    codes: frozenset[str] | None = None  # a required binding, when its codes are known
    value_set: str = ""
    targets: frozenset[str] | None = None  # a Reference restricted to these resource types

    @property
    def many(self) -> bool:
        return self.max != 1


@dataclass(slots=True)
class TypeDef:
    name: str
    elements: dict[str, ElementDef] = field(default_factory=dict)  # by JSON name
    order: list[str] = field(default_factory=list)  # JSON names in definition order (XML order)
    required: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # (label, JSON names)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # choice group -> JSON names


@dataclass(frozen=True, slots=True)
class Primitive:
    name: str
    kind: str  # boolean | integer | decimal | string
    regex: re.Pattern[str] | None


class Structure:
    def __init__(self, table: dict[str, object]) -> None:
        prims = table["primitives"]
        assert isinstance(prims, dict)
        # The specification's regexes are XML Schema's: there \s is space, tab, CR and LF only. Python's \s would
        # also take U+3000 (the ideographic space of Chinese input methods), U+00A0 and others, and refuse them.
        self.primitives: dict[str, Primitive] = {
            name: Primitive(name, kind, re.compile(rx, re.ASCII) if rx else None) for name, (kind, rx) in prims.items()
        }
        value_sets = table["valueSets"]
        assert isinstance(value_sets, dict)
        codes = {url: frozenset(c) for url, c in value_sets.items()}
        resources = table["resources"]
        assert isinstance(resources, list)
        self.resources: frozenset[str] = frozenset(resources)
        types = table["types"]
        assert isinstance(types, dict)
        self.types: dict[str, TypeDef] = {}
        for tname, rows in types.items():
            tdef = TypeDef(tname)
            for name, etypes, mn, mx, flags, vs, *rest in rows:
                choice = "c" in flags
                targets = frozenset(rest[0]) if rest else None
                names = []
                for t in etypes:
                    jname = name + t[0].upper() + t[1:] if choice else name
                    names.append(jname)
                    tdef.elements[jname] = ElementDef(jname, t, mn, mx, name if choice else None, "a" in flags,
                                                      codes.get(vs) if vs else None, vs,
                                                      targets if t == "Reference" else None)
                    tdef.order.append(jname)
                if choice:
                    tdef.groups[name] = tuple(names)
                if mn > 0:
                    tdef.required.append((name + ("[x]" if choice else ""), tuple(names)))
            self.types[tname] = tdef

    def is_primitive(self, type_name: str) -> bool:
        return type_name in self.primitives


@cache
def load_structure(profiles_dir: Path) -> Structure:
    table = json.loads((profiles_dir / TABLE).read_text(encoding="utf-8"))
    return Structure(table)
