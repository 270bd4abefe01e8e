"""Pure FHIR search (docs/architecture.md): query string -> SearchRequest -> MongoDB filter and sort.

    registry = SearchRegistry.from_profiles("fhir_profiles")
    ix, so = extract_index(resource, registry, base_url=...)          # at write time
    req = parse_search("Observation", params, registry, strict=False, default_count=20, max_count=500)
    exact = compile_filter(req, registry, resolve)                    # may use $elemMatch
    lowered = lower_for_database(exact)                               # FerretDB-safe superset
    keep = [d for d in candidates if matches(exact, d)]
    sort = compile_sort(req) + [("_id", 1)]

No Flask, no pymongo: everything here is plain dicts and dataclasses.
"""

from app.search.compile import compile_filter, compile_sort
from app.search.extract import extract_index
from app.search.matcher import lower_for_database, matches
from app.search.parser import parse_search
from app.search.registry import SearchParamDef, SearchRegistry
from app.search.request import Filter, FilterValue, HasFilter, Include, SearchRequest, SortRule

__all__ = [
    "Filter",
    "FilterValue",
    "HasFilter",
    "Include",
    "SearchParamDef",
    "SearchRegistry",
    "SearchRequest",
    "SortRule",
    "compile_filter",
    "compile_sort",
    "extract_index",
    "lower_for_database",
    "matches",
    "parse_search",
]
