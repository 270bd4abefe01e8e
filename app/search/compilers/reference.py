"""Reference search (R4 search §3.1.1.4.10): [id], [Type]/[id], absolute URLs, the type modifier
(subject:Patient=123), :identifier and :missing. Chains and _has are resolved in app.search.compile."""

from __future__ import annotations

from app.core.errors import bad_request
from app.core.ids import reference_type
from app.search.compilers import Query, equals_any, field, missing
from app.search.compilers.token import token_key
from app.search.extract import local_reference
from app.search.registry import SearchParamDef
from app.search.request import Filter
from app.search.values import unescape


def reference_keys(flt: Filter, base_url: str | None = None) -> list[str]:
    """Search values as they are indexed: 'Type/id' (or 'id' alone, or an absolute URL). A type modifier
    (subject:Patient) makes an id 'Patient/<id>', and refuses a value naming another type (Group/1), which
    would otherwise be searched as it stands."""
    keys = []
    for v in flt.values:
        text = local_reference(unescape(v.value), base_url)
        if flt.modifier and "/" not in text:
            text = f"{flt.modifier}/{text}"
        elif flt.modifier and reference_type(text) != flt.modifier:
            raise bad_request(f"{flt.code}:{flt.modifier}: {v.value!r} is not a reference to a {flt.modifier}",
                              flt.code)
        keys.append(text)
    return keys


def compile_reference(p: SearchParamDef, flt: Filter, base_url: str | None = None) -> Query:
    if flt.modifier == "missing":
        return missing(p, flt)
    if flt.modifier == "identifier":
        return equals_any(field(p, "identifier"), [token_key(v.value) for v in flt.values])
    return equals_any(field(p), reference_keys(flt, base_url))
