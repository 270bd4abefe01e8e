"""URI search (R4 search §3.1.1.4.13): exact match, :below (prefix), :above (ancestors), :missing."""

from __future__ import annotations

import re

from app.search.compilers import Query, any_of, equals_any, field, missing
from app.search.registry import SearchParamDef
from app.search.request import Filter
from app.search.values import unescape


def _ancestors(uri: str) -> list[str]:
    """'http://a/b/c' -> ['http://a/b/c', 'http://a/b', 'http://a']."""
    scheme_end = uri.find("://")
    floor = scheme_end + 3 if scheme_end >= 0 else 0
    out = [uri]
    cut = uri.rstrip("/")
    while (i := cut.rfind("/")) > floor:
        cut = cut[:i]
        out.append(cut)
    return out


def compile_uri(p: SearchParamDef, flt: Filter) -> Query:
    if flt.modifier == "missing":
        return missing(p, flt)
    values = [unescape(v.value) for v in flt.values]
    if flt.modifier == "below":
        return any_of([{field(p): {"$regex": "^" + re.escape(v)}} for v in values])
    if flt.modifier == "above":
        return equals_any(field(p), [a for v in values for a in _ancestors(v)])
    return equals_any(field(p), values)
