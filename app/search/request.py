"""A parsed FHIR search (http://hl7.org/fhir/R4/search.html) as plain data: what the parser produces and
the compilers and the store consume. Nothing here knows about query strings or MongoDB."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FilterValue:
    """One OR-alternative: `ge2020` is FilterValue('ge', '2020'); prefix None when not given."""

    prefix: str | None
    value: str


@dataclass
class HasFilter:
    """_has:<resource_type>:<reference_code>:<filter.code>=... (reverse chaining, one level)."""

    resource_type: str
    reference_code: str
    filter: Filter


@dataclass
class Filter:
    """One occurrence of a parameter (occurrences AND together; `values` OR together).

    For a chain (subject:Patient.identifier=x), `values` is empty and `chain` is (target type, inner filter).
    For _has, code is '_has' and `has` holds the reverse chain.
    For _compartment, code is '_compartment' and `any_of` holds one filter per compartment parameter of the type
    (a resource is in the patient's compartment through any of them).
    """

    code: str
    modifier: str | None = None
    values: list[FilterValue] = field(default_factory=list)
    chain: tuple[str, Filter] | None = None
    has: HasFilter | None = None
    any_of: list[Filter] = field(default_factory=list)


@dataclass(frozen=True)
class SortRule:
    code: str
    descending: bool = False


@dataclass(frozen=True)
class Include:
    """_include=Observation:subject:Patient (target_type optional); iterate for :iterate / :recurse."""

    source_type: str
    code: str
    target_type: str | None = None
    iterate: bool = False


@dataclass
class SearchRequest:
    resource_type: str
    filters: list[Filter] = field(default_factory=list)
    sort: list[SortRule] = field(default_factory=list)
    count: int | None = None
    offset: int | None = None
    cursor: str | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    total: str | None = None
    ignored: list[str] = field(default_factory=list)
    # Set only on the sub-requests that compile_filter hands to `resolve` for _has: the resolver then returns
    # the values of ix[collect] of the matches (references "Type/id") instead of their ids.
    collect: str | None = None
