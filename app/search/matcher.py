"""MongoDB query semantics in memory, and the rewrite that makes exact filters safe for FerretDB.

matches(filter, doc) evaluates the operators app.search.compile emits ($eq $ne $in $nin $gt $gte $lt $lte
$regex/$options $exists $elemMatch $not $all $size, and $and $or $nor) the way MongoDB does: a condition on
an array matches when any element does; $ne and $nin hold when the field is absent; values of different
types never compare (numbers excepted: int and float compare); $elemMatch correlates its conditions on one
element. Anything else raises ValueError.

lower_for_database(filter) replaces each $elemMatch over sub-documents by the same conditions on dotted
paths, uncorrelated: a superset of the exact answer, which the store then narrows with matches(). FerretDB
v1.24 refuses such an $elemMatch when it holds $and/$or and answers others wrongly; it also does not
correlate the bounds of a scalar $elemMatch, so any $elemMatch under a negation is dropped (measured).

resource_matches(filter, resource, type, registry) evaluates a compiled filter on one resource held in memory,
as the store would on its stored document (its index values extracted the way a write extracts them).
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from app.core.timeutil import naive_utc
from app.search.extract import extract_index
from app.search.registry import SearchRegistry

_LOGICAL = frozenset({"$and", "$or", "$nor"})
_FIELD_OPS = frozenset(
    {
        "$eq",
        "$ne",
        "$in",
        "$nin",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$regex",
        "$options",
        "$exists",
        "$elemMatch",
        "$not",
        "$all",
        "$size",
    }
)
_NEGATIVE = frozenset({"$ne", "$nin", "$not"})


# --- matching --------------------------------------------------------------------------------------------
def resource_matches(flt: dict[str, Any], resource: dict[str, Any], rtype: str, registry: SearchRegistry,
                     rid: Any = None) -> bool:
    """Whether a resource (not stored, or a view of a stored one) satisfies a compiled filter; `rid` its _id."""
    ix, _ = extract_index({**resource, "resourceType": rtype}, registry)
    return matches(flt, {"_id": resource.get("id") if rid is None else rid, "ix": ix})


def matches(flt: dict[str, Any], doc: dict[str, Any]) -> bool:
    """True when `doc` satisfies `flt` under MongoDB semantics."""
    for key, cond in flt.items():
        if key == "$and":
            ok = all(matches(f, doc) for f in _clauses(key, cond))
        elif key == "$or":
            ok = any(matches(f, doc) for f in _clauses(key, cond))
        elif key == "$nor":
            ok = not any(matches(f, doc) for f in _clauses(key, cond))
        elif key.startswith("$"):
            raise ValueError(f"unsupported top-level operator {key}")
        else:
            ok = _match_field(_leaves(doc, key.split(".")), cond)
        if not ok:
            return False
    return True


def _clauses(op: str, cond: Any) -> list[dict[str, Any]]:
    if not isinstance(cond, list) or not cond or not all(isinstance(c, dict) for c in cond):
        raise ValueError(f"{op} needs a non-empty list of filters")
    return cond


def _leaves(value: Any, parts: list[str]) -> list[Any]:
    """The values at a dotted path, descending into arrays of sub-documents; [] when absent."""
    if not parts:
        return [value]
    if isinstance(value, dict):
        return _leaves(value[parts[0]], parts[1:]) if parts[0] in value else []
    if isinstance(value, list):
        return [leaf for item in value if isinstance(item, dict) for leaf in _leaves(item, parts)]
    return []


def _candidates(leaves: list[Any]) -> list[Any]:
    """Each leaf, and the elements of array leaves (a condition on an array tests its elements)."""
    out: list[Any] = []
    for leaf in leaves:
        out.append(leaf)
        if isinstance(leaf, list):
            out.extend(leaf)
    return out


def _is_operator_dict(cond: Any) -> bool:
    return isinstance(cond, dict) and bool(cond) and all(k.startswith("$") for k in cond)


def _match_field(leaves: list[Any], cond: Any) -> bool:
    if not _is_operator_dict(cond):
        return _eq(leaves, cond)
    unknown = set(cond) - _FIELD_OPS
    if unknown:
        raise ValueError(f"unsupported operator {sorted(unknown)[0]}")
    if "$options" in cond and "$regex" not in cond:
        raise ValueError("$options without $regex")
    return all(_op(op, arg, leaves, cond) for op, arg in cond.items() if op != "$options")


def _bracket(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, datetime):
        return "date"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    raise ValueError(f"unsupported value type {type(v).__name__}")


def _plain(v: Any) -> Any:
    """Aware datetimes as naive UTC (what the index stores), so both kinds compare."""
    if isinstance(v, datetime) and v.tzinfo is not None:
        return naive_utc(v)
    return v


def _same(a: Any, b: Any) -> bool:
    return _bracket(a) == _bracket(b) and _plain(a) == _plain(b)


def _eq(leaves: list[Any], value: Any) -> bool:
    if value is None and not leaves:  # {f: null} matches a missing field
        return True
    return any(_same(c, value) for c in _candidates(leaves))


def _compare(leaves: list[Any], op: str, value: Any) -> bool:
    kind = _bracket(value)
    if kind in ("array", "object", "null"):
        raise ValueError(f"{op} needs a scalar")
    value = _plain(value)
    for c in _candidates(leaves):
        if _bracket(c) != kind:
            continue
        c = _plain(c)
        if (
            (op == "$gt" and c > value)
            or (op == "$gte" and c >= value)
            or (op == "$lt" and c < value)
            or (op == "$lte" and c <= value)
        ):
            return True
    return False


@lru_cache(maxsize=1024)
def _regex(pattern: str, options: str) -> re.Pattern[str]:
    flags = 0
    for o in options:
        if o not in "imsx":
            raise ValueError(f"unsupported $options {o!r}")
        flags |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}[o]
    return re.compile(pattern, flags)


def _op(op: str, arg: Any, leaves: list[Any], cond: dict[str, Any]) -> bool:
    if op == "$eq":
        return _eq(leaves, arg)
    if op == "$ne":
        return not _eq(leaves, arg)
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise ValueError(f"{op} needs a list")
        found = any(_eq(leaves, a) for a in arg)
        return found if op == "$in" else not found
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return _compare(leaves, op, arg)
    if op == "$regex":
        if not isinstance(arg, str):
            raise ValueError("$regex needs a string")
        rx = _regex(arg, str(cond.get("$options", "")))
        return any(isinstance(c, str) and rx.search(c) is not None for c in _candidates(leaves))
    if op == "$exists":
        return bool(leaves) == bool(arg)
    if op == "$elemMatch":
        if not isinstance(arg, dict) or not arg:
            raise ValueError("$elemMatch needs a non-empty filter")
        elements = [e for leaf in leaves if isinstance(leaf, list) for e in leaf]
        if _is_operator_dict(arg) and not (set(arg) & _LOGICAL):
            return any(_match_field([e], arg) for e in elements)
        return any(isinstance(e, dict) and matches(arg, e) for e in elements)
    if op == "$not":
        if not _is_operator_dict(arg):
            raise ValueError("$not needs an operator expression")
        return not _match_field(leaves, arg)
    if op == "$all":
        if not isinstance(arg, list):
            raise ValueError("$all needs a list")
        return bool(arg) and all(_eq(leaves, a) for a in arg)
    if op == "$size":
        if isinstance(arg, bool) or not isinstance(arg, int):
            raise ValueError("$size needs an integer")
        return any(isinstance(leaf, list) and len(leaf) == arg for leaf in leaves)
    raise ValueError(f"unsupported operator {op}")


# --- lowering for FerretDB -------------------------------------------------------------------------------
def _is_doc_query(q: Any) -> bool:
    """An $elemMatch argument that queries sub-documents (not an operator expression on scalars)."""
    return isinstance(q, dict) and (not _is_operator_dict(q) or bool(set(q) & _LOGICAL))


def _has_elem_match(node: Any) -> bool:
    if isinstance(node, dict):
        return "$elemMatch" in node or any(_has_elem_match(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_elem_match(v) for v in node)
    return False


def lower_for_database(flt: dict[str, Any]) -> dict[str, Any]:
    """`flt` without sub-document $elemMatch: a filter whose answer contains the exact answer."""
    out: dict[str, Any] = {}
    extra: list[dict[str, Any]] = []
    for key, cond in flt.items():
        if key == "$and":
            for part in (lower_for_database(c) for c in cond):
                extra.extend(part["$and"] if list(part) == ["$and"] else [part] if part else [])
        elif key == "$or":
            parts = [lower_for_database(c) for c in cond]
            if all(parts):  # otherwise one branch is always true, and so is the $or
                extra.append({"$or": parts})
        elif key == "$nor":
            # A weaker condition under a negation would make it stronger: drop such a clause (a superset).
            # Scalar $elemMatch too: FerretDB v1.24 does not correlate its bounds (measured), so it is weaker.
            if not _has_elem_match(cond):
                out[key] = cond
        elif _is_operator_dict(cond):
            ops: dict[str, Any] = {}
            for op, arg in cond.items():
                if op == "$elemMatch" and _is_doc_query(arg):
                    extra.extend(_prefix(lower_for_database(arg), key))
                elif not (op == "$not" and _has_elem_match(arg)):
                    ops[op] = arg
            if ops:
                out[key] = ops
        else:
            out[key] = cond
    if extra and not out and len(extra) == 1:
        return extra[0]
    if extra:
        out["$and"] = extra
    return out


def _prefix(q: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """Conditions on one element, restated on `path`.<field> as a list of conjuncts. Negative ones (true
    for 'some other element' but false for 'no element' on arrays) are dropped: that only widens."""
    out: list[dict[str, Any]] = []
    for key, cond in q.items():
        if key == "$and":
            out.extend(c for sub in cond for c in _prefix(sub, path))
        elif key == "$or":
            branches = [_prefix(sub, path) for sub in cond]
            if all(branches):  # an empty branch is always true, and so is the $or
                out.append({"$or": [_conjunction(b) for b in branches]})
        elif key.startswith("$"):  # $nor and anything unexpected: drop (superset)
            continue
        elif _is_operator_dict(cond):
            kept = {op: v for op, v in cond.items() if op not in _NEGATIVE}
            if kept.get("$exists") is False:
                del kept["$exists"]
            if "$options" in kept and "$regex" not in kept:
                del kept["$options"]
            if kept:
                out.append({f"{path}.{key}": kept})
        elif cond is not None:
            out.append({f"{path}.{key}": cond})
    return out


def _conjunction(clauses: list[dict[str, Any]]) -> dict[str, Any]:
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}
