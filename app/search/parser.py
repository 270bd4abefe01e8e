"""Query parameters -> SearchRequest (FHIR R4 search, http://hl7.org/fhir/R4/search.html).

Comma = OR, repetition = AND; prefixes (§3.1.1.4), modifiers (§3.1.1.5), one level of chaining (§3.1.1.7)
and of reverse chaining with _has (§3.1.1.8), _sort, _count, _include/_revinclude, _summary, _elements,
_total. Parameter names are looked up in the registry before anything uses them, so a name never becomes a
database field unless the registry knows it. Unknown parameters: 400 in strict mode, `ignored` otherwise.
Invalid values: always 400, naming the parameter.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from app.core.errors import FhirError, bad_request
from app.search.registry import SearchParamDef, SearchRegistry
from app.search.request import Filter, FilterValue, HasFilter, Include, SearchRequest, SortRule
from app.search.values import date_range, decimal_range, split_escaped

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
PREFIXED_TYPES = frozenset({"date", "number", "quantity"})
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "missing"},
    "reference": {"missing", "identifier"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "below", "above"},
}
SUMMARY = frozenset({"true", "false", "text", "data", "count"})
TOTAL = frozenset({"none", "estimate", "accurate"})
DEFAULT_SKIP = frozenset({"_format", "_pretty"})
_ELEMENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TZ_SPACE = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})$")  # '+' decoded as a space


def zone_plus(text: str) -> str:
    """A date-time whose zone's '+' arrived as a space (sent unencoded in a query string) with the '+' back."""
    return _TZ_SPACE.sub(r"\1+\2", text)


class _Unknown(Exception):
    """An unknown parameter name (strict: 400; lenient: ignored)."""


def parse_search(
    resource_type: str,
    params: list[tuple[str, str]],
    registry: SearchRegistry,
    *,
    strict: bool = False,
    default_count: int = 20,
    max_count: int = 500,
    skip: Collection[str] = DEFAULT_SKIP,
) -> SearchRequest:
    """Parse decoded (name, value) pairs for a search on `resource_type`; raises FhirError(400)."""
    if resource_type not in registry.resource_types():
        raise bad_request(f"Resource type {resource_type!r} is not supported", code="not-supported")
    req = SearchRequest(resource_type, count=default_count)
    for name, value in params:
        if name in skip:
            continue
        try:
            _parse_one(req, name, value, registry, max_count)
        except _Unknown:
            if strict:
                raise bad_request(
                    f"Unknown search parameter {name!r} for {resource_type}", name, code="not-supported"
                ) from None
            req.ignored.append(name)
    _within_bounds(req)
    return req


# Alternatives (a,b,c) a search may hold in all, each one a lookup: 15,000 references took 10 s of one worker.
MAX_VALUES = 1000


def _within_bounds(req: SearchRequest) -> None:
    values = 0
    for f in req.filters:
        values += len(f.values) + sum(len(g.values) for g in f.any_of)
        if values > MAX_VALUES:
            raise bad_request(f"the search holds more than {MAX_VALUES} values (comma-separated alternatives) in "
                              f"all; {f.code!r} goes beyond that: search in parts", f.code, code="too-costly")


def _parse_one(req: SearchRequest, name: str, value: str, registry: SearchRegistry, max_count: int) -> None:
    rt = req.resource_type
    if name == "_count":
        req.count = min(non_negative(name, value), max_count)
    elif name == "_offset":
        req.offset = non_negative(name, value)
    elif name == "_cursor":
        req.cursor = value
    elif name == "_sort":
        req.sort = [_sort_rule(rt, key, registry) for key in value.split(",") if key.strip()]
    elif name.split(":")[0] in ("_include", "_revinclude"):
        base, _, mod = name.partition(":")
        if mod not in ("", "iterate", "recurse"):
            raise bad_request(f"Unknown modifier {mod!r} on {base}", name)
        rev = base == "_revinclude"
        inc = _include(rt, name, value, registry, rev, iterate=bool(mod))
        (req.revincludes if rev else req.includes).append(inc)
    elif name == "_summary":
        if value not in SUMMARY:
            raise bad_request(f"_summary must be one of {', '.join(sorted(SUMMARY))}, not {value!r}", name)
        req.summary = value
    elif name == "_elements":
        elements = [e.strip() for e in value.split(",") if e.strip()]
        bad = [e for e in elements if not _ELEMENT_RE.match(e)]
        if bad:
            raise bad_request(f"_elements: {bad[0]!r} is not an element name", name)
        req.elements = elements
    elif name == "_total":
        if value not in TOTAL:
            raise bad_request(f"_total must be one of none, estimate, accurate, not {value!r}", name)
        req.total = value
    elif name.startswith("_has:"):
        flt = _has(rt, name, value, registry)
        if flt is not None:
            req.filters.append(flt)
    elif name == "_compartment":
        req.filters.append(_compartment(rt, value, registry))
    else:
        flt = parse_filter(rt, name, value, registry, allow_chain=True)
        if flt is not None:
            req.filters.append(flt)


def non_negative(name: str, value: str) -> int:
    """A non-negative integer written in ASCII digits (str.isdigit also accepts "²" and "٣"); 400 naming the
    parameter otherwise."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise bad_request(f"{name} must be a non-negative integer, not {value!r}", name)
    return int(text)


def _sort_rule(rt: str, key: str, registry: SearchRegistry) -> SortRule:
    key = key.strip()
    desc = key.startswith("-")
    code = key[1:] if desc else key
    if registry.get(rt, code) is None:
        raise bad_request(f"_sort: unknown search parameter {code!r} for {rt}", "_sort")
    return SortRule(code, desc)


def _include(rt: str, name: str, value: str, registry: SearchRegistry, rev: bool, iterate: bool) -> Include:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise bad_request(f"{name} must be SourceType:parameter[:TargetType], not {value!r}", name)
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    types = registry.resource_types()
    if source not in types:
        raise bad_request(f"{name}: unknown resource type {source!r}", name)
    if code == "*":  # every reference parameter of the source type (search.html#include)
        if target is not None and target not in types:
            raise bad_request(f"{name}: unknown resource type {target!r}", name)
        if not rev and not iterate and source != rt:
            raise bad_request(f"{name}: source type must be {rt} (or use :iterate)", name)
        return Include(source, code, target, iterate)
    p = registry.get(source, code)
    if p is None or p.type != "reference":
        raise bad_request(f"{name}: {code!r} is not a reference parameter of {source}", name)
    if target is not None and (target not in types or (p.target and target not in p.target)):
        raise bad_request(f"{name}: {source}:{code} cannot point to {target!r}", name)
    if not rev and not iterate and source != rt:
        raise bad_request(f"{name}: source type must be {rt} (or use :iterate)", name)
    return Include(source, code, target, iterate)


def _has(rt: str, name: str, value: str, registry: SearchRegistry) -> Filter | None:
    parts = name.split(":", 3)
    if len(parts) != 4 or not all(parts[1:]):
        raise bad_request(f"{name}: expected _has:Type:reference:parameter", name)
    _, other, ref_code, inner = parts
    if inner.startswith("_has"):
        raise bad_request(f"{name}: only one level of _has is supported", name)
    if other not in registry.resource_types():
        raise bad_request(f"{name}: unknown resource type {other!r}", name)
    ref = registry.get(other, ref_code)
    if ref is None or ref.type != "reference" or (ref.target and rt not in ref.target):
        raise bad_request(f"{name}: {other}.{ref_code} is not a reference to {rt}", name)
    flt = parse_filter(other, inner, value, registry, allow_chain=False)
    return None if flt is None else Filter("_has", has=HasFilter(other, ref_code, flt))


def _compartment(rt: str, value: str, registry: SearchRegistry) -> Filter:
    """_compartment=Patient/<id>: the resource is in that patient's compartment through any of the type's
    compartment parameters (CompartmentDefinition/patient): an OR across parameters that FHIR's query syntax
    cannot say, used by the compartment search and to confine patient-scoped tokens."""
    if not value.startswith("Patient/") or value.count("/") != 1 or len(value) == len("Patient/"):
        raise bad_request(f"_compartment must be Patient/<id>, not {value!r}", "_compartment")
    codes = [c for c in registry.compartment.get(rt, []) if registry.get(rt, c) is not None]
    alternatives = [f for f in (parse_filter(rt, c, value, registry, allow_chain=False) for c in codes) if f]
    if not alternatives:
        raise bad_request(f"{rt} is not in the Patient compartment", "_compartment", code="not-supported")
    return Filter("_compartment", values=[FilterValue(None, value)], any_of=alternatives)


def chain_targets(p: SearchParamDef, inner_code: str, registry: SearchRegistry) -> list[str]:
    """The supported types a reference parameter may point to that define `inner_code`."""
    types = registry.resource_types()
    candidates = [t for t in (p.target or types) if t in types]
    return [t for t in candidates if registry.get(t, inner_code.split(":")[0]) is not None]


def parse_filter(
    rt: str, name: str, value: str, registry: SearchRegistry, *, allow_chain: bool
) -> Filter | None:
    """One `name=value` for `rt`; None when the value is empty (FHIR: such parameters are ignored)."""
    head, dot, rest = name.partition(".")
    code, colon, modifier = head.partition(":")
    p = registry.get(rt, code)
    if p is None:
        raise _Unknown(name)
    if dot:
        if not allow_chain:
            raise bad_request(f"{name}: only one level of chaining is supported", name)
        return _chain(rt, name, p, modifier if colon else None, rest, value, registry)
    mod = modifier if colon else None
    if mod is not None and mod not in MODIFIERS[p.type] and not _is_type_modifier(p, mod, registry):
        raise bad_request(f"Unknown modifier ':{mod}' for {p.type} parameter {code!r}", name)
    if mod == "missing":
        if value not in ("true", "false"):
            raise bad_request(f"{name} must be true or false, not {value!r}", name)
        return Filter(code, mod, [FilterValue(None, value)])
    values = [_value(p, mod, v, name) for v in split_escaped(value, ",") if v != ""]
    if not values:
        return None
    if len(values) > 1 and not p.multiple_or:
        raise bad_request(f"{name} does not accept several values", name)
    return Filter(code, mod, values)


def _is_type_modifier(p: SearchParamDef, mod: str, registry: SearchRegistry) -> bool:
    return p.type == "reference" and mod in registry.resource_types() and (not p.target or mod in p.target)


def _chain(
    rt: str,
    name: str,
    p: SearchParamDef,
    type_mod: str | None,
    inner: str,
    value: str,
    registry: SearchRegistry,
) -> Filter | None:
    if p.type != "reference":
        raise bad_request(f"{name}: {p.code!r} is not a reference parameter and cannot be chained", name)
    if "." in inner:
        raise bad_request(f"{name}: only one level of chaining is supported", name)
    if type_mod is not None:
        if not _is_type_modifier(p, type_mod, registry):
            raise bad_request(f"{name}: {rt}.{p.code} cannot point to {type_mod!r}", name)
        targets = [type_mod]
    else:
        targets = chain_targets(p, inner, registry)
        if len(targets) > 1:
            raise bad_request(
                f"{name}: {p.code} may point to {', '.join(targets)}; "
                f"name one, e.g. {p.code}:{targets[0]}.{inner}",
                name,
            )
        if not targets:
            raise _Unknown(name)
    try:
        flt = parse_filter(targets[0], inner, value, registry, allow_chain=False)
    except FhirError as exc:
        raise bad_request(f"{name}: {exc.diagnostics}", name) from None
    return None if flt is None else Filter(p.code, type_mod, [], chain=(targets[0], flt))


def _value(p: SearchParamDef, mod: str | None, raw: str, name: str) -> FilterValue:
    prefix = None
    text = raw
    if p.type in PREFIXED_TYPES and len(raw) > 2 and raw[:2] in PREFIXES:
        prefix, text = raw[:2], raw[2:]
    try:
        if p.type == "date":
            text = zone_plus(text)
            date_range(text)
        elif p.type == "number":
            decimal_range(text)
        elif p.type == "quantity":
            parts = split_escaped(text, "|")
            if len(parts) not in (1, 3):
                raise ValueError("expected number|system|code")
            decimal_range(parts[0])
    except ValueError as exc:
        hint = f" (prefix must be one of {', '.join(PREFIXES)})" if raw[:1].isalpha() else ""
        msg = f"Invalid value {raw!r} for {p.type} parameter {name!r}: {exc}{hint}"
        raise bad_request(msg, name) from None
    if p.type == "token" and mod != "text" and len(split_escaped(text, "|")) > 2:
        raise bad_request(f"Invalid token {raw!r} for {name!r}: at most one '|' (system|code)", name)
    return FilterValue(prefix, text)
