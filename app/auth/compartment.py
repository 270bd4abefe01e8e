"""The patient compartment as a search constraint (FHIR R4 CompartmentDefinition/patient).

The same definition the owner function (app.auth.owner) reads: fhir_profiles/CompartmentDefinition/patient.json.
`compartment_search` turns "the records of Patient X" into one search parameter for a type, used to confine
searches of patient-scoped tokens and for the compartment search `GET Patient/{id}/{type}`. Where a type names its
patient in several elements, the one parameter chosen (`patient`, else `subject`, else the first) may find fewer
records than the whole compartment, never more; the disclosure gate judges every row on all of them anyway.
A type outside the definition holds nobody's data (directory resources such as Organization and Practitioner).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from app.auth.owner import load_compartment

PREFERRED = ("patient", "subject")


@lru_cache(maxsize=8)
def compartment(profiles_dir: Path) -> dict[str, list[str]]:
    return load_compartment(profiles_dir)


def is_directory(profiles_dir: Path, resource_type: str) -> bool:
    return resource_type != "Binary" and resource_type not in compartment(profiles_dir)


def compartment_param(profiles_dir: Path, resource_type: str, known: set[str] | None = None) -> str | None:
    """The search parameter that places a resource of this type in a patient's compartment."""
    if resource_type == "Patient":
        return "_id"
    params = compartment(profiles_dir).get(resource_type) or []
    usable = [p for p in params if known is None or p in known]
    for name in PREFERRED:
        if name in usable:
            return name
    return usable[0] if usable else None


def compartment_search(profiles_dir: Path, resource_type: str, patient_id: str,
                       known: set[str] | None = None) -> tuple[str, str] | None:
    """The search parameter that keeps a search inside the patient's compartment (None: no compartment)."""
    code = compartment_param(profiles_dir, resource_type, known)
    if code is None:
        return None
    return (code, patient_id) if code == "_id" else (code, f"Patient/{patient_id}")
