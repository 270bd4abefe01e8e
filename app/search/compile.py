"""SearchRequest -> MongoDB filter and sort over the stored documents {"_id", "ix", "so", ...}.

compile_filter gives the EXACT filter (it may use $elemMatch on sub-documents; app.search.matcher lowers
it for FerretDB). Chains and _has need another search first: the caller's `resolve(type, sub_request)`
runs it and returns ids, or, when sub_request.collect is set (_has), the ix[collect] values of the matches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.core.errors import bad_request
from app.search.compilers import Query, all_of, equals_any, field, missing
from app.search.compilers.date import compile_date
from app.search.compilers.number import compile_number
from app.search.compilers.quantity import compile_quantity
from app.search.compilers.reference import compile_reference
from app.search.compilers.string import compile_string
from app.search.compilers.token import compile_token, token_key
from app.search.compilers.uri import compile_uri
from app.search.registry import CODE_RE, SearchParamDef, SearchRegistry
from app.search.request import Filter, SearchRequest

Resolve = Callable[[str, SearchRequest], list[str]]

COMPILERS: dict[str, Callable[[SearchParamDef, Filter], Query]] = {
    "token": compile_token,
    "string": compile_string,
    "date": compile_date,
    "quantity": compile_quantity,
    "number": compile_number,
    "uri": compile_uri,
}


def compile_filter(
    request: SearchRequest, registry: SearchRegistry, resolve: Resolve, *, base_url: str | None = None
) -> dict[str, Any]:
    """The MongoDB filter for all of the request's filters (AND); {} when there are none."""
    return all_of([_compile(request.resource_type, f, registry, resolve, base_url) for f in request.filters])


def _compile(rt: str, flt: Filter, registry: SearchRegistry, resolve: Resolve, base_url: str | None) -> Query:
    if flt.any_of:
        return {"$or": [_compile(rt, f, registry, resolve, base_url) for f in flt.any_of]}
    if flt.has is not None:
        h = flt.has
        sub = SearchRequest(h.resource_type, [h.filter], count=None, collect=h.reference_code)
        prefix = rt + "/"
        ids = {str(r)[len(prefix) :] for r in resolve(h.resource_type, sub) if str(r).startswith(prefix)}
        return {"_id": {"$in": sorted(ids)}}
    p = registry.get(rt, flt.code)
    if p is None:  # the parser already refused it; never build a path from an unknown name
        raise bad_request(f"Unknown search parameter {flt.code!r} for {rt}", flt.code)
    if flt.chain is not None:
        target, inner = flt.chain
        found = resolve(target, SearchRequest(target, [inner], count=None))
        return {field(p): {"$in": sorted({f"{target}/{i}" for i in found})}}
    if flt.code == "_id":
        return _compile_id(p, flt)
    if p.type == "reference":
        return compile_reference(p, flt, base_url)
    return COMPILERS[p.type](p, flt)


def _compile_id(p: SearchParamDef, flt: Filter) -> Query:
    if flt.modifier == "missing":
        return {"_id": missing(p, flt)[field(p)]}
    ids = [token_key(v.value) for v in flt.values]
    if flt.modifier == "not":
        return {"_id": {"$nin": ids}}
    return equals_any("_id", ids)


def compile_sort(request: SearchRequest) -> list[tuple[str, int]]:
    """[("so.<code>", 1 | -1), ...]; the store appends ("_id", 1) to break ties."""
    out = []
    for r in request.sort:
        if not CODE_RE.match(r.code):  # the parser checked it against the registry; never trust a path
            raise bad_request(f"_sort: invalid parameter {r.code!r}", "_sort")
        out.append(("_id" if r.code == "_id" else f"so.{r.code}", -1 if r.descending else 1))
    return out
