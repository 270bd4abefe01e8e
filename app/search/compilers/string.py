"""String search (R4 search §3.1.1.4.9): default starts-with on the normalised form (case and accent
insensitive), :contains anywhere, :exact on the raw value, :missing."""

from __future__ import annotations

import re

from app.search.compilers import Query, any_of, equals_any, field, missing
from app.search.registry import SearchParamDef
from app.search.request import Filter
from app.search.values import normalize, unescape


def compile_string(p: SearchParamDef, flt: Filter) -> Query:
    if flt.modifier == "missing":
        return missing(p, flt)
    values = [unescape(v.value) for v in flt.values]
    if flt.modifier == "exact":
        return equals_any(field(p, "exact"), values)
    anchor = "" if flt.modifier == "contains" else "^"
    return any_of([{field(p): {"$regex": anchor + re.escape(normalize(v))}} for v in values])
