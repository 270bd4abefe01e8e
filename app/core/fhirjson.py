"""FHIR JSON that keeps decimals exactly as written (FHIR R4 json.html: "1.50" stays 1.50).

`loads` parses numbers with a fraction or exponent as FhirDecimal, a float that remembers its text, so
every numeric use (search index, matching, comparisons) keeps working while `dumps` writes the original
text back. NaN and Infinity are refused (not JSON). Nothing here imports Flask or pymongo.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson


class FhirDecimal(float):
    """A float that carries the decimal text it was read from."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> FhirDecimal:
        obj = super().__new__(cls, text)
        obj.text = text
        return obj

    def __repr__(self) -> str:
        return self.text

    def __copy__(self) -> FhirDecimal:
        return self

    def __deepcopy__(self, memo: Any) -> FhirDecimal:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FhirDecimal, (self.text,))


class JsonError(ValueError):
    """The text is not JSON (message says where)."""


def _no_constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number")


def _int(text: str) -> int | FhirDecimal:
    # Beyond 64 bits a database cannot store an integer: such a number can only be a decimal.
    return int(text) if len(text) < 19 else FhirDecimal(text)


class DuplicateKeyError(JsonError):
    """An object names the same key twice."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are unique. RFC 8259 §4 says names SHOULD be unique and leaves what a duplicate means
    to each parser (Python keeps the last, others the first): `{"resourceType": "Patient", "resourceType":
    "Observation"}` would be read as one thing here and another elsewhere, so it is refused, naming the key."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(f"the key {key!r} appears twice in one object; keys must be unique")
            seen.add(key)
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_DECODER = json.JSONDecoder(parse_float=FhirDecimal, parse_int=_int, parse_constant=_no_constant,
                            object_pairs_hook=_object)


def loads(data: bytes | str) -> Any:
    """Parse JSON, decimals as FhirDecimal. Raises JsonError, also for a string holding a lone UTF-16 surrogate
    (JSON's escape "\\ud800" allows it; it is not Unicode text, and no UTF-8, BSON or XML can hold it), and
    DuplicateKeyError for an object that names a key twice. A UTF-8 byte order mark before the text is skipped
    (RFC 8259 §8.1 lets a parser ignore it)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        text = text.removeprefix("\ufeff")
        parsed = _DECODER.decode(text)
    except UnicodeDecodeError as err:
        raise JsonError(f"the body is not UTF-8: {err}") from None
    except json.JSONDecodeError as err:
        raise JsonError(str(err)) from None
    if _SURROGATE_ESCAPE.search(text):  # rare: then check that every surrogate escaped was one of a pair
        try:
            dumps(parsed)
        except orjson.JSONEncodeError:
            raise JsonError("a string holds a lone UTF-16 surrogate (an escape from \\ud800 to \\udfff "
                            "that is not half of a pair): not Unicode text") from None
    return parsed


def _default(obj: Any) -> Any:
    if isinstance(obj, FhirDecimal):
        return orjson.Fragment(obj.text)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(obj: Any, pretty: bool = False) -> bytes:
    """Serialise with orjson, writing each FhirDecimal as its original text."""
    opts = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if pretty else 0)
    return orjson.dumps(obj, default=_default, option=opts)


def decimal_shadow(node: Any, path: str = "", out: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """[{"p": "/valueQuantity/value", "t": "1.50"}, ...] for every FhirDecimal a plain float would not
    write back the same (p: a JSON pointer into the resource, t: the text).

    A database stores numbers as doubles; this list is what a stored document keeps beside the resource
    so that `restore_decimals` can put the exact text back after a read. (Flat documents, no nested
    arrays: FerretDB v1 stores those too.)
    """
    out = out if out is not None else []
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, dict | list | FhirDecimal):
                decimal_shadow(v, f"{path}/{k}", out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, dict | list | FhirDecimal):
                decimal_shadow(v, f"{path}/{i}", out)
    elif isinstance(node, FhirDecimal) and node.text != repr(float(node)):
        out.append({"p": path, "t": node.text})
    return out


def restore_decimals(node: Any, shadow: list[dict[str, str]]) -> None:
    """Put the decimal texts of `shadow` back into `node` (in place); pointers that no longer fit are skipped."""
    for item in shadow:
        steps = str(item.get("p", "")).split("/")[1:]
        if not steps:
            continue
        parent = node
        try:
            for step in steps[:-1]:
                parent = parent[int(step)] if isinstance(parent, list) else parent[step]
            last: Any = int(steps[-1]) if isinstance(parent, list) else steps[-1]
            value = parent[last]
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            parent[last] = FhirDecimal(str(item["t"]))


def kind_of(value: Any) -> str:
    """What a parsed JSON value is, for error texts: "a string", "an array", "null" ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
