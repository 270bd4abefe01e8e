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
    if "://" in ref or "?" in ref or ref.startswith(("#", "urn:")):  # "?": conditional, no record of its own
        return None
    parts = ref.split("/")
    if len(parts) >= 2 and parts[0][:1].isupper() and is_valid_id(parts[1]):
        return parts[0], parts[1]
    return None


# A resource type's name as it stands in a reference: a capital letter, then letters (Patient, MedicationRequest).
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")


def reference_type(ref: Any) -> str | None:
    """The resource type a reference points to, read from its text (a Reference object or its `reference`
    string); None when the text names none. The one reading of FHIR R4 references.html for every caller:
    - `Type/id`, `Type/id/_history/vid`, and an absolute URL ending in either (`https://x/fhir/Type/id`) -> Type;
    - a conditional reference `Type?criteria` (relative only, as a transaction takes it: http.html#trules)
      -> Type; a query after `Type/id` is ignored like the rest of the URL's;
    - `#id` (a contained resource) or `#`, `urn:uuid:` / `urn:oid:` (an entry of the same Bundle) -> None: the
      type is that of what they name, which the text does not say;
    - anything else (no id, an empty segment, a lower-case or non-alphabetic type, a URL that does not end in
      Type/id) -> None.
    Whether Type is a resource type of this server is the caller's question. split_reference answers another
    one (which record of this server, if any) and reads more loosely, but when both name a type it is the same."""
    text = ref.get("reference") if isinstance(ref, dict) else ref
    if not isinstance(text, str) or text.startswith(("#", "urn:")):
        return None
    path, conditional, _ = text.partition("?")
    if conditional and _TYPE_NAME.fullmatch(path):
        return path
    segs = path.split("/")
    if len(segs) >= 4 and segs[-2] == "_history" and segs[-1]:
        segs = segs[:-2]
    if len(segs) >= 2 and segs[-1] and _TYPE_NAME.fullmatch(segs[-2]):
        return segs[-2]
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
