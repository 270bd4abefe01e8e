"""FHIR $operations: one file each, registered in OPERATIONS (the route table adds them).

To add one: write app/fhir/operations/<name>.py with a handler (FhirRequest, Services, type, id|None)
-> FhirResponse and add one line to OPERATIONS below. Its OperationDefinition is declared beside it (an `Operation`,
app/fhir/operations/definition.py), unless it implements a published one whole; then run
scripts/gen_operation_definitions.py to publish it in fhir_profiles/OperationDefinition.
"""

from __future__ import annotations

from typing import Any

from app.fhir.operations import ehc_qrcode, ehc_status, ehc_verify, everything, ihe_pix, match, merge, validate

# name -> {handler, levels (system/type/instance), types, definition (canonical), methods, access,
#         operation (its own OperationDefinition's declaration)}
OPERATIONS: dict[str, dict[str, Any]] = {
    "validate": validate.OPERATION,
    "ihe-pix": ihe_pix.OPERATION,
    "match": match.OPERATION,
    "merge": merge.OPERATION,
    "everything": everything.OPERATION,
    "ehc-qrcode": ehc_qrcode.OPERATION,
    "ehc-verify": ehc_verify.OPERATION,
    "ehc-status": ehc_status.OPERATION,
}
