"""The patient compartment (FHIR R4 compartmentdefinition-patient), as far as this server's types go.

Pure: works on stored documents `{_id, prov, res, ix}` and on index values computed for a resource
about to be written. A type with no compartment parameter here holds no patient's data (directory
resources such as Organization and Practitioner); Binary belongs to whatever its securityContext names.
"""

from __future__ import annotations

from typing import Any

# The search parameter that places a resource of each type in a patient's compartment.
COMPARTMENT_PARAM = {
    "Patient": "_id",
    "Observation": "patient",
    "DocumentReference": "patient",
    "Consent": "patient",
    "RelatedPerson": "patient",
    "AuditEvent": "patient",
}
DIRECTORY_TYPES = frozenset({"Organization", "Practitioner"})


def record_patients(resource_type: str, doc: dict[str, Any]) -> list[str]:
    """The Patient ids a stored document belongs to ([] when it is nobody's record)."""
    if resource_type == "Patient":
        return [doc["_id"]] if doc.get("_id") else []
    if resource_type == "Binary":
        ref = ((doc.get("res") or {}).get("securityContext") or {}).get("reference", "")
        return [ref.split("/", 1)[1]] if ref.startswith("Patient/") else []
    code = COMPARTMENT_PARAM.get(resource_type)
    if not code:
        return []
    out = []
    for value in (doc.get("ix") or {}).get(code, ()):
        if isinstance(value, str) and value.startswith("Patient/"):
            pid = value.split("/", 1)[1]
            if pid not in out:
                out.append(pid)
    return out


def binary_context(doc: dict[str, Any]) -> tuple[str, str] | None:
    """(type, id) of a Binary's securityContext when it is not a Patient."""
    ref = ((doc.get("res") or {}).get("securityContext") or {}).get("reference", "")
    if "/" in ref and not ref.startswith("Patient/"):
        rtype, rid = ref.split("/", 1)
        return rtype, rid.split("/")[0]
    return None


def compartment_search(resource_type: str, patient_id: str) -> tuple[str, str] | None:
    """The search parameter that keeps a search inside the patient's compartment."""
    code = COMPARTMENT_PARAM.get(resource_type)
    if code is None:
        return None
    return (code, patient_id) if code == "_id" else (code, f"Patient/{patient_id}")
