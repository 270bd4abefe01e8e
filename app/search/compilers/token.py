"""Token search (R4 search §3.1.1.4.8 / token): system|code, code, |code, system|; :not, :text, :missing.

Matches the encodings of app.search.extract: "S|C", "C", "|C", "S|" and normalised text under ":text".

A parameter whose values are all `code`s bound to one code system (SearchParamDef.system, from
fhir_profiles/token-systems.json) has that system implied (R4 search.html#token: "the system is implied by the
value set binding"): `S|C` is the code C, `S|` any value, and `|C` (no system) or another system's code none.
Its stored values are codes without a system ("C", and "|C" as every string token), so the query asks for the
code: documents indexed before this rule and after it are found alike, and no reindex is needed.
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


def implied_codes(p: SearchParamDef, flt: Filter) -> tuple[list[str], bool]:
    """For a parameter with an implied system: (the codes the values ask for, whether one asks for any value,
    `S|`). `|C` and another system's values ask for nothing: no value of the parameter is without that system."""
    codes: list[str] = []
    anything = False
    for v in flt.values:
        parts = split_escaped(v.value, "|")
        if len(parts) == 1:
            codes.append(unescape(parts[0]))
        elif unescape(parts[0]) == p.system:
            if parts[1]:
                codes.append(unescape(parts[1]))
            else:
                anything = True
    return list(dict.fromkeys(codes)), anything


def compile_token(p: SearchParamDef, flt: Filter) -> Query:
    if flt.modifier == "missing":
        return missing(p, flt)
    if flt.modifier == "text":
        path = field(p, "text")
        return any_of([{path: {"$regex": "^" + re.escape(normalize(unescape(v.value)))}} for v in flt.values])
    if p.system:
        codes, anything = implied_codes(p, flt)
        if flt.modifier == "not":
            return {field(p): {"$exists": False}} if anything else {field(p): {"$nin": codes}}
        if anything:
            return {field(p): {"$exists": True}}
        return equals_any(field(p), codes) if codes else {field(p): {"$in": []}}
    keys = token_keys(p, flt)
    if flt.modifier == "not":  # FHIR :not: no value equal to any of them (absent values included)
        return {field(p): {"$nin": list(dict.fromkeys(keys))}}
    return equals_any(field(p), keys)
