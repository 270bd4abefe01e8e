"""Token search (R4 search §3.1.1.4.8 / token): system|code, code, |code, system|; :not, :text, :missing.

Matches the encodings of app.search.extract: "S|C", "C", "|C", "S|" and normalised text under ":text".
"""

from __future__ import annotations

import re

from app.search.compilers import Query, any_of, equals_any, field, missing
from app.search.registry import SearchParamDef
from app.search.request import Filter
from app.search.values import digits, normalize, split_escaped, unescape


def token_key(text: str) -> str:
    """A search value as it is indexed ('S|C', 'C', '|C' or 'S|'), escapes removed."""
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        return unescape(parts[0])
    return f"{unescape(parts[0])}|{unescape(parts[1])}"


def token_keys(p: SearchParamDef, flt: Filter) -> list[str]:
    keys = [token_key(v.value) for v in flt.values]
    if "telecom" in p.expression:  # phone numbers are also indexed as bare digits
        bare = [digits(k) for k in keys if "|" not in k]
        keys += [d for d in bare if d.lstrip("+") and d not in keys]
    return keys


def compile_token(p: SearchParamDef, flt: Filter) -> Query:
    if flt.modifier == "missing":
        return missing(p, flt)
    if flt.modifier == "text":
        path = field(p, "text")
        return any_of([{path: {"$regex": "^" + re.escape(normalize(unescape(v.value)))}} for v in flt.values])
    keys = token_keys(p, flt)
    if flt.modifier == "not":  # FHIR :not: no value equal to any of them (absent values included)
        return {field(p): {"$nin": list(dict.fromkeys(keys))}}
    return equals_any(field(p), keys)
