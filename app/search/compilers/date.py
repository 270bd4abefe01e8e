"""Date search (R4 search §3.1.1.4.3 prefixes, §3.1.1.4.6 date) over indexed half-open ranges [lo, hi).

With the search value's range [a, b):
  eq  a <= lo and hi <= b          ne  lo < a or hi > b
  gt  hi > b                       lt  lo < a
  ge  hi > b or (a <= lo, hi <= b)  le  lo < a or (a <= lo, hi <= b)
  sa  lo >= b                      eb  hi <= a
  ap  [lo, hi) overlaps [a - t, b + t), t = 10% of the distance from now (at least a day)
Conditions on both ends of one range are correlated with $elemMatch (a resource may have several ranges).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.search.compilers import Query, any_of, field, missing
from app.search.registry import SearchParamDef
from app.search.request import Filter, FilterValue
from app.search.values import date_range


def _within(a: datetime, b: datetime) -> dict[str, Any]:
    return {"lo": {"$gte": a}, "hi": {"$lte": b}}


def range_condition(path: str, prefix: str, a: datetime, b: datetime, now: datetime | None = None) -> Query:
    """The clause for one prefixed search range [a, b) against the ranges stored at `path`."""
    lo, hi = f"{path}.lo", f"{path}.hi"
    if prefix == "eq":
        return {path: {"$elemMatch": _within(a, b)}}
    if prefix == "ne":
        return {"$or": [{lo: {"$lt": a}}, {hi: {"$gt": b}}]}
    if prefix == "gt":
        return {hi: {"$gt": b}}
    if prefix == "lt":
        return {lo: {"$lt": a}}
    if prefix == "ge":
        return {"$or": [{hi: {"$gt": b}}, {path: {"$elemMatch": _within(a, b)}}]}
    if prefix == "le":
        return {"$or": [{lo: {"$lt": a}}, {path: {"$elemMatch": _within(a, b)}}]}
    if prefix == "sa":
        return {lo: {"$gte": b}}
    if prefix == "eb":
        return {hi: {"$lte": a}}
    if prefix == "ap":
        now = now or datetime.now(UTC).replace(tzinfo=None)
        tol = max(abs(now - a) / 10, timedelta(days=1))
        start = a - tol if a - datetime.min > tol else datetime.min
        end = b + tol if datetime.max - b > tol else datetime.max
        return {path: {"$elemMatch": {"lo": {"$lt": end}, "hi": {"$gt": start}}}}
    raise ValueError(f"unknown prefix {prefix!r}")


def value_condition(path: str, value: FilterValue, now: datetime | None = None) -> Query:
    a, b = date_range(value.value)
    return range_condition(path, value.prefix or "eq", a, b, now)


def compile_date(p: SearchParamDef, flt: Filter) -> Query:
    if flt.modifier == "missing":
        return missing(p, flt)
    return any_of([value_condition(field(p), v) for v in flt.values])
