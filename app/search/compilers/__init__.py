"""One compiler per search parameter type: (SearchParamDef, Filter) -> MongoDB filter over the stored index.

Field paths are built only from registry codes ("ix.<code>", "ix.<code>:<suffix>"); request values only ever
appear as comparison operands (and inside regexes only through re.escape), never as keys.
"""

from __future__ import annotations

from typing import Any

from app.search.registry import SearchParamDef
from app.search.request import Filter

Query = dict[str, Any]


def field(p: SearchParamDef, suffix: str | None = None) -> str:
    return f"ix.{p.code}" + (f":{suffix}" if suffix else "")


def any_of(clauses: list[Query]) -> Query:
    """OR of clauses, without a needless $or around one."""
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def all_of(clauses: list[Query]) -> Query:
    clauses = [c for c in clauses if c]
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def equals_any(path: str, values: list[Any]) -> Query:
    unique = list(dict.fromkeys(values))
    return {path: unique[0]} if len(unique) == 1 else {path: {"$in": unique}}


def missing(p: SearchParamDef, flt: Filter) -> Query:
    """:missing=true -> no index value at all; :missing=false -> at least one."""
    return {field(p): {"$exists": flt.values[0].value != "true"}}
