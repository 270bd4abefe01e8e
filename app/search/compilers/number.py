"""Number search (R4 search §3.1.1.4.4): prefixes over indexed floats, eq/ne with the implicit range of
the value's significant digits (100 means [99.5, 100.5)); ap is +-10%, widened to eq's range where that is wider."""

from __future__ import annotations

from app.search.compilers import Query, any_of, field, missing
from app.search.registry import SearchParamDef
from app.search.request import Filter, FilterValue
from app.search.values import decimal_range

_SIMPLE = {"gt": "$gt", "sa": "$gt", "lt": "$lt", "eb": "$lt", "ge": "$gte", "le": "$lte"}


def number_condition(prefix: str, text: str) -> list[Query]:
    """Conditions on one number as operator dicts, OR-ed: [{'$gte': lo, '$lt': hi}] and the like."""
    value, lo, hi = decimal_range(text)
    if prefix in _SIMPLE:
        return [{_SIMPLE[prefix]: value}]
    if prefix == "ne":
        return [{"$lt": lo}, {"$gte": hi}]
    if prefix == "ap":  # 10% either side, never narrower than eq: ap0 covers what 0 does, [-0.5, 0.5)
        tol = abs(value) / 10
        return [{"$gte": min(lo, value - tol), "$lte": max(hi, value + tol)}]
    return [{"$gte": lo, "$lt": hi}]  # eq


def _clause(path: str, v: FilterValue) -> Query:
    conds = number_condition(v.prefix or "eq", v.value)
    # Two bounds must hold for the same element of the array: $elemMatch (on scalars FerretDB has it too).
    return any_of([{path: {"$elemMatch": c} if len(c) > 1 else c} for c in conds])


def compile_number(p: SearchParamDef, flt: Filter) -> Query:
    if flt.modifier == "missing":
        return missing(p, flt)
    return any_of([_clause(field(p), v) for v in flt.values])
