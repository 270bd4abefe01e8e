"""Quantity search (R4 search §3.1.1.4.7): [prefix]number|system|code over {"v", "s", "c", "u"} entries.

The number follows number search (implicit precision for eq/ne, ap = +-10%). With a system, code must equal
"c"; without one (5.4||mg), the code may match the code or the unit. Conditions hold for one and the same
quantity ($elemMatch).
"""

from __future__ import annotations

from typing import Any

from app.search.compilers import Query, any_of, field, missing
from app.search.compilers.number import number_condition
from app.search.registry import SearchParamDef
from app.search.request import Filter, FilterValue
from app.search.values import split_escaped, unescape


def _clause(path: str, v: FilterValue) -> Query:
    parts = split_escaped(v.value, "|")
    unit: list[dict[str, Any]] = []
    if len(parts) == 3:
        system, code = unescape(parts[1]), unescape(parts[2])
        if system:
            unit.append({"s": system})
        if code:
            unit.append({"c": code} if system else {"$or": [{"c": code}, {"u": code}]})
    value = [{"v": c} for c in number_condition(v.prefix or "eq", parts[0])]
    conds = [any_of(value), *unit]
    match = conds[0] if len(conds) == 1 else {"$and": conds}
    return {path: {"$elemMatch": match}}


def compile_quantity(p: SearchParamDef, flt: Filter) -> Query:
    if flt.modifier == "missing":
        return missing(p, flt)
    return any_of([_clause(field(p), v) for v in flt.values])
