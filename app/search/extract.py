"""Index values of a resource, extracted at write time (HAPI's "search parameter extraction").

extract_index(resource, registry) -> (ix, so): `ix[code]` is the list of encoded values one search
parameter finds in the resource (absent when none), `so[code]` its sort key (`sort_key`): the value itself when
the resource has one, `[smallest, largest]` when it has several that differ. MongoDB and FerretDB alike sort an
array by its smallest element ascending and by its largest descending, so `_sort=given` orders by each resource's
smallest given name and `_sort=-given` by its largest (as HAPI does); `sort_value` picks the end a direction
uses. The sort values are those of the elements (a token's codes, a string's parts, a date's start, a reference's
target), not the forms added only to match (`system|code`, family and given joined, pinyin, a bare id). A key
stored before 2026-12 is one scalar (the first value of a string, token, reference or uri; the smallest of a
date, number or quantity): it is its own smallest and largest, so it sorts among the new ones by that value.
The encodings are the storage contract with app/store and the compilers in app/search/compilers:

  token      "S|C", "C", "S|" (and "|C" when there is no system); booleans "true"/"false"; ContactPoint
             "phone|V", "V", "phone|" and the bare digits of phone numbers;
             ix[code + ":text"] normalised display/text
  string     normalised strings; ix[code + ":exact"] the raw strings (HumanName: parts and family+given);
             for `phonetic`, the pinyin of Chinese names too ('zhangwei', 'zhang wei')
  date       [{"lo": datetime, "hi": datetime}], half-open, naive UTC (a Period, or a Timing by its outer limits)
  reference  ["Type/id", "id"] (absolute URLs under base_url made relative); ix[code + ":identifier"] tokens
  quantity   [{"v": float, "s": system, "c": code, "u": unit}]
  number     [float]         uri  [str]
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from app.core.ids import reference_type
from app.search.registry import SearchParamDef, SearchRegistry
from app.search.values import date_range, digits, normalize, period_range, timing_range

CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_PHONE_SYSTEMS = frozenset({"phone", "fax", "sms", "pager"})

Index = dict[str, Any]


def _add(out: list[Any], value: Any) -> None:
    if value not in out:
        out.append(value)


def sort_key(values: list[Any]) -> Any:
    """The stored sort key of a parameter's sort values (not empty, all of one type): the value when they are
    all the same, else [smallest, largest]."""
    lo, hi = min(values), max(values)
    return lo if lo == hi else [lo, hi]


def sort_value(key: Any, descending: bool) -> Any:
    """The value a sort in that direction orders a stored key by: a list's largest element descending, its
    smallest ascending (as MongoDB and FerretDB sort arrays); a scalar is both. A list stored by an older or a
    blinded write need not be in order, so its ends are found, not indexed."""
    if isinstance(key, list):
        return (max if descending else min)(key) if key else None
    return key


# --- token -----------------------------------------------------------------------------------------------
def _coding(c: dict[str, Any], codes: list[str], texts: list[str], keys: list[str]) -> None:
    system, code = c.get("system") or "", c.get("code")
    if isinstance(code, str) and code:
        _add(codes, f"{system}|{code}")
        _add(codes, code)
        _add(keys, code)
    if system:
        _add(codes, f"{system}|")
    if isinstance(c.get("display"), str):
        _add(texts, normalize(c["display"]))


def _token_value(v: Any, codes: list[str], texts: list[str], keys: list[str] | None = None) -> None:
    """The token values of v into `codes` (its texts into `texts`), and into `keys` the codes it sorts by: each
    code or value itself, not the forms added to match it (system|code, |code, a phone number's digits)."""
    keys = [] if keys is None else keys
    if isinstance(v, bool):
        _add(codes, "true" if v else "false")
        _add(keys, "true" if v else "false")
    elif isinstance(v, str):
        _add(codes, v)
        _add(codes, f"|{v}")
        _add(keys, v)
    elif isinstance(v, dict):
        if "coding" in v or ("text" in v and not {"system", "code", "value"} & v.keys()):  # CodeableConcept
            for c in v.get("coding", []):
                if isinstance(c, dict):
                    _coding(c, codes, texts, keys)
            if isinstance(v.get("text"), str):
                _add(texts, normalize(v["text"]))
        elif "value" in v:
            value = v["value"]
            if not isinstance(value, str):
                return
            system = v.get("system") or ""
            if system in CONTACT_SYSTEMS and not {"type", "assigner"} & v.keys():  # ContactPoint
                # token system|code is ContactPoint.system|value (phone|138...), like HAPI
                _add(codes, f"{system}|{value}")
                _add(codes, value)
                _add(keys, value)
                _add(codes, f"{system}|")
                if system in _PHONE_SYSTEMS and digits(value) and digits(value) != value:
                    _add(codes, digits(value))
            else:  # Identifier
                _add(codes, f"{system}|{value}")
                _add(codes, value)
                _add(keys, value)
                if system:
                    _add(codes, f"{system}|")
                typ = v.get("type")
                if isinstance(typ, dict) and isinstance(typ.get("text"), str):
                    _add(texts, normalize(typ["text"]))
        else:  # Coding
            _coding(v, codes, texts, keys)


def _token(p: SearchParamDef, values: list[Any], ix: Index, so: Index, base_url: str | None) -> None:
    codes: list[str] = []
    texts: list[str] = []
    keys: list[str] = []
    for v in values:
        _token_value(v, codes, texts, keys)
    if codes:
        ix[p.code] = codes
        so[p.code] = sort_key(keys or codes)  # codes alone: system-only codings ("S|")
    if texts:
        ix[p.code + ":text"] = texts


# --- string ----------------------------------------------------------------------------------------------
def _strings(v: Any, out: list[str], own: list[str]) -> None:
    """The strings of v into `out`; into `own` too, but for the forms that only help to match it (family and given
    joined): those it sorts by."""
    if isinstance(v, str):
        _add(out, v)
        _add(own, v)
    elif isinstance(v, dict):
        joined: list[str] = []
        if {"line", "city", "district", "state", "postalCode", "country"} & v.keys():  # Address
            keys = ("city", "district", "state", "postalCode", "country", "text")
            parts = [*v.get("line", []), *(v.get(k) for k in keys)]
        else:  # HumanName (family, given, prefix, suffix, text), or anything with a text
            family = v.get("family") if isinstance(v.get("family"), str) else ""
            given = [g for g in v.get("given", []) if isinstance(g, str)]
            parts = [family, *given, *v.get("prefix", []), *v.get("suffix", []), v.get("text")]
            if family and given:
                # '张伟' is family 张 + given 伟 written together; 'Zhang Wei' / 'Wei Zhang' with a space.
                g = " ".join(given)
                joined = [family + "".join(given), "".join(given) + family, f"{family} {g}", f"{g} {family}"]
        for part in parts:
            if isinstance(part, str) and part.strip():
                _add(out, part)
                _add(own, part)
        for form in joined:
            if form.strip():
                _add(out, form)


_CJK = re.compile(r"[\u3400-\u9fff]")


@functools.lru_cache(maxsize=65536)
def _pinyin(text: str) -> tuple[str, str]:
    """'张伟' -> ('zhangwei', 'zhang wei'): the phonetic parameter matches Chinese names by pinyin. Cached: the
    same few thousand surnames and given names recur (pypinyin's phrase lookup was a sixth of an import's CPU)."""
    from pypinyin import lazy_pinyin  # a large table: loaded on first use

    syllables = [s for s in lazy_pinyin(text) if s.strip()]
    return "".join(syllables), " ".join(syllables)


def _string(p: SearchParamDef, values: list[Any], ix: Index, so: Index, base_url: str | None) -> None:
    raw: list[str] = []
    own: list[str] = []
    for v in values:
        _strings(v, raw, own)
    if raw:
        norm: list[str] = []
        for s in raw:
            _add(norm, normalize(s))
        if p.code == "phonetic":
            for s in raw:
                if _CJK.search(s):
                    for form in _pinyin(s):
                        _add(norm, normalize(form))
        ix[p.code] = norm
        ix[p.code + ":exact"] = raw
        so[p.code] = sort_key([k for k in map(normalize, own) if k] or norm[:1])  # blanks sort by nothing


# --- date ------------------------------------------------------------------------------------------------
def _date(p: SearchParamDef, values: list[Any], ix: Index, so: Index, base_url: str | None) -> None:
    ranges: list[dict[str, Any]] = []
    for v in values:
        try:
            r = date_range(v) if isinstance(v, str) else _dict_range(v) if isinstance(v, dict) else None
        except ValueError:
            r = None  # an invalid date is the validator's business, not the index's
        if r:
            _add(ranges, {"lo": r[0], "hi": r[1]})
    if ranges:
        ix[p.code] = ranges
        so[p.code] = sort_key([r["lo"] for r in ranges])


def _dict_range(v: dict[str, Any]) -> tuple[datetime, datetime] | None:
    """A Timing (events, a repeat) by its outer limits; anything else with a start or an end as a Period."""
    return timing_range(v) if {"event", "repeat"} & v.keys() else period_range(v)


# --- reference -------------------------------------------------------------------------------------------
def local_reference(text: str, base_url: str | None) -> str:
    """'<base>/Patient/1/_history/2' -> 'Patient/1'; other absolute URLs unchanged."""
    ref = text
    if base_url and ref.startswith(base_url.rstrip("/") + "/"):
        ref = ref[len(base_url.rstrip("/")) + 1 :]
    if "://" in ref or ref.startswith(("urn:", "#")):
        return ref
    segs = ref.split("/")
    if len(segs) == 4 and segs[2] == "_history":
        segs = segs[:2]
    return "/".join(segs)


def _reference(p: SearchParamDef, values: list[Any], ix: Index, so: Index, base_url: str | None) -> None:
    refs: list[str] = []
    targets: list[str] = []  # the references as written (local): refs adds their bare ids
    idents: list[str] = []
    for v in values:
        text = v.get("reference") if isinstance(v, dict) else v
        if isinstance(text, str) and text:
            ref = local_reference(text, base_url)
            _add(refs, ref)
            _add(targets, ref)
            if "://" not in ref and "?" not in ref and reference_type(ref) and ref.count("/") == 1:
                _add(refs, ref.split("/", 1)[1])
        if isinstance(v, dict) and isinstance(v.get("identifier"), dict):
            _token_value(v["identifier"], idents, [])
    if refs:
        ix[p.code] = refs
        so[p.code] = sort_key(targets)
    if idents:
        ix[p.code + ":identifier"] = idents


# --- quantity, number, uri -------------------------------------------------------------------------------
def _number_of(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _quantity(p: SearchParamDef, values: list[Any], ix: Index, so: Index, base_url: str | None) -> None:
    out: list[dict[str, Any]] = []
    for v in values:
        if isinstance(v, dict) and (n := _number_of(v.get("value"))) is not None:
            q = {"v": n, "s": v.get("system") or "", "c": v.get("code") or "", "u": v.get("unit") or ""}
            _add(out, q)
    if out:
        ix[p.code] = out
        so[p.code] = sort_key([q["v"] for q in out])


def _number(p: SearchParamDef, values: list[Any], ix: Index, so: Index, base_url: str | None) -> None:
    out: list[float] = []
    for v in values:
        if (n := _number_of(v)) is not None:
            _add(out, n)
    if out:
        ix[p.code] = out
        so[p.code] = sort_key(out)


def _uri(p: SearchParamDef, values: list[Any], ix: Index, so: Index, base_url: str | None) -> None:
    out: list[str] = []
    for v in values:
        if isinstance(v, str) and v:
            _add(out, v)
    if out:
        ix[p.code] = out
        so[p.code] = sort_key(out)


_EXTRACTORS: dict[str, Callable[[SearchParamDef, list[Any], Index, Index, str | None], None]] = {
    "token": _token,
    "string": _string,
    "date": _date,
    "reference": _reference,
    "quantity": _quantity,
    "number": _number,
    "uri": _uri,
}


def extract_index(
    resource: dict[str, Any], registry: SearchRegistry, *, base_url: str | None = None
) -> tuple[Index, Index]:
    """(ix, so) for one resource: index values and sort keys for every search parameter of its type."""
    ix: Index = {}
    so: Index = {}
    for code, p in registry.params(resource.get("resourceType", "")).items():
        if code == "_id":  # the document's own _id
            continue
        values = p.evaluator()(resource)
        if values:
            _EXTRACTORS[p.type](p, values, ix, so, base_url)
    return ix, so
