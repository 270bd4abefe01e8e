"""The patient compartment as a search constraint (FHIR R4 CompartmentDefinition/patient).

The same definition the owner function (app.auth.owner) reads: fhir_profiles/CompartmentDefinition/patient.json
(loaded once, by app.search.registry.load_compartment). `compartment_search` turns "the records of Patient X" into
the search parameter `_compartment=Patient/X`, which the search engine reads as "any of the type's compartment
parameters points at X" (a Coverage is the patient's as policy-holder, subscriber, beneficiary or payor). It
confines the searches of patient-scoped tokens and answers the compartment search `GET Patient/{id}/{type}`; the
disclosure gate still judges every row. A type outside the definition holds nobody's data (directory resources
such as Organization and Practitioner).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from app.search.registry import load_compartment


@lru_cache(maxsize=8)
def compartment(profiles_dir: Path) -> dict[str, list[str]]:
    return load_compartment(profiles_dir)


def is_directory(profiles_dir: Path, resource_type: str) -> bool:
    return resource_type != "Binary" and resource_type not in compartment(profiles_dir)


def compartment_search(profiles_dir: Path, resource_type: str, patient_id: str,
                       known: set[str] | None = None) -> tuple[str, str] | None:
    """The search parameter that keeps a search inside the patient's compartment (None: no compartment)."""
    if resource_type == "Patient":
        return "_id", patient_id
    codes = [c for c in compartment(profiles_dir).get(resource_type) or [] if known is None or c in known]
    return ("_compartment", f"Patient/{patient_id}") if codes else None
