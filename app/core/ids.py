"""FHIR logical ids and references."""

from __future__ import annotations

import re
import uuid
from typing import Any

# FHIR R4 id datatype: [A-Za-z0-9\-\.]{1,64}
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def new_id() -> str:
    return str(uuid.uuid4())


def is_valid_id(value: str) -> bool:
    return bool(ID_RE.match(value))


def split_reference(reference: str, base_url: str | None = None) -> tuple[str, str] | None:
    """'Patient/123' (or '<base>/Patient/123', or '.../_history/2') -> ('Patient', '123'); None if not local."""
    ref = reference
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1 :]
    if "://" in ref or ref.startswith(("#", "urn:")):
        return None
    parts = ref.split("/")
    if len(parts) >= 2 and parts[0][:1].isupper() and is_valid_id(parts[1]):
        return parts[0], parts[1]
    return None


def replaced_by(patient: dict[str, Any] | None) -> str | None:
    """The id a merged Patient was replaced by (its link of type replaced-by), if any."""
    for link in (patient or {}).get("link") or []:
        if not isinstance(link, dict) or link.get("type") != "replaced-by":
            continue
        ref = (link.get("other") or {}).get("reference")
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.split("/", 1)[1]
    return None
