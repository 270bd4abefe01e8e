#!/usr/bin/env python3
"""Write fhir_profiles/OperationDefinition/<id>.json: the server's own OperationDefinitions, as it serves them.

One source: what each operation module declares (its OPERATION and its `Operation`, app/fhir/operations/definition.py).
The server builds the same resources at run time (GET OperationDefinition/<id>, app/fhir/conformance.py); these
files publish them with the implementation guide in fhir_profiles (and the HL7 validator stage loads them).

    python3 scripts/gen_operation_definitions.py          # rewrite the files (and remove those of no operation)
    python3 scripts/gen_operation_definitions.py --check  # exit 1 when a file differs from what is served

tests/integration/test_operation_definitions.py checks that the files are the served definitions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.fhir.operations import OPERATIONS  # noqa: E402
from app.fhir.operations.definition import operation_definitions  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "fhir_profiles" / "OperationDefinition"


def rendered() -> dict[str, str]:
    """file name -> text of every own OperationDefinition."""
    return {f"{od['id']}.json": json.dumps(od, indent=2, ensure_ascii=False) + "\n"
            for od in operation_definitions(OPERATIONS)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = ap.parse_args(argv)
    files = rendered()
    existing = {p.name for p in OUT.glob("*.json")}
    stale = sorted(existing - set(files))
    changed = sorted(n for n, text in files.items()
                     if not (OUT / n).is_file() or (OUT / n).read_text(encoding="utf-8") != text)
    if args.check:
        for name in changed + stale:
            print(f"differs from what is served: {OUT / name}")
        return 1 if changed or stale else 0
    for name in changed:
        (OUT / name).write_text(files[name], encoding="utf-8")
        print(f"wrote {OUT / name}")
    for name in stale:
        (OUT / name).unlink()
        print(f"removed {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
