"""FHIRPath Patch (FHIR R4 fhirpatch.html): a Parameters resource of `operation` parts applied to a resource.

Each operation has `type` (add | insert | delete | replace | move), `path` (a FHIRPath expression naming the
element), and as the type needs `name`, `value[x]`, `index`, `source`, `destination`. Paths are the forms patches
use in practice: element names from the resource type, with an optional index (`Patient.name[0].given`) or a
`where(<field>='<text>')` filter (`Patient.identifier.where(system='urn:x')`). Anything else is refused with 400
naming the operation. `insert` and `move` name the repeating element itself (`Patient.name`); whether an element
repeats (`add` makes a list of one, or refuses a second value) comes from the R4 definitions. Pure: no Flask, no
database.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from app.core.errors import FhirError, bad_request
from app.fhir.parameters import read_parameters
from app.fhir.structure import load_structure
from app.profiles import PROFILES_DIR

_STEP = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?$")
_WHERE = re.compile(r"^where\(\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*'([^'\\]*)'\s*\)$")


def apply_fhirpath_patch(resource: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    ops = read_parameters(params, "a FHIRPath Patch").parts("operation")
    if not ops:
        raise bad_request("the FHIRPath Patch has no 'operation' parameter", expression="Parameters.parameter")
    out = copy.deepcopy(resource)
    for n, op in enumerate(ops):
        where = f"Parameters.parameter[{n}]"
        parts = {p["name"]: p for p in op.entries}
        kind = _value(parts.get("type"))
        path = _value(parts.get("path"))
        if kind not in ("add", "insert", "delete", "replace", "move") or not isinstance(path, str):
            raise bad_request(f"{where}: an operation needs a type (add, insert, delete, replace, move) and a path",
                              expression=where)
        _apply(out, str(resource.get("resourceType")), kind, path, parts, where)
    return out


def _value(part: dict[str, Any] | None) -> Any:
    if not part:
        return None
    for key, value in part.items():
        if key.startswith("value"):
            return value
    if isinstance(part.get("part"), list):  # a complex value given as parts
        return {str(p.get("name")): _value(p) for p in part["part"] if isinstance(p, dict)}
    return None


def _resolve(root: dict[str, Any], rtype: str, path: str, where: str) -> list[tuple[Any, Any]]:
    """(container, key) pairs the path names: key is a dict key or a list index."""
    steps = _split(path)
    if not steps or steps[0] != rtype:
        raise bad_request(f"{where}: the path must start with {rtype}", expression=where)
    found: list[tuple[Any, Any]] = [(None, root)]  # (container, key) with the root as a pseudo-entry
    nodes: list[tuple[Any, Any, Any]] = [(None, None, root)]
    for step in steps[1:]:
        nxt: list[tuple[Any, Any, Any]] = []
        m = _WHERE.match(step)
        if m:
            field, text = m.groups()
            for parent, key, node in nodes:
                if isinstance(node, dict) and str(node.get(field)) == text:
                    nxt.append((parent, key, node))
            nodes = nxt
            continue
        m = _STEP.match(step)
        if not m:
            raise bad_request(f"{where}: the path step {step!r} is not supported", expression=where)
        name, index = m.group(1), m.group(2)
        for _, _, node in nodes:
            targets = node if isinstance(node, list) else [node]
            for t in targets:
                if not isinstance(t, dict) or name not in t:
                    continue
                value = t[name]
                if isinstance(value, list):
                    if index is not None:
                        i = int(index)
                        if i < len(value):
                            nxt.append((value, i, value[i]))
                    else:
                        nxt.extend((value, i, v) for i, v in enumerate(value))
                elif index in (None, "0"):
                    nxt.append((t, name, value))
        nodes = nxt
    found = [(parent, key) for parent, key, _ in nodes]
    return found


def _split(path: str) -> list[str]:
    steps, depth, start = [], 0, 0
    for i, ch in enumerate(path):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            steps.append(path[start:i])
            start = i + 1
    steps.append(path[start:])
    return [s.strip() for s in steps if s.strip()]


def _one(targets: list[tuple[Any, Any]], path: str, where: str) -> tuple[Any, Any]:
    if len(targets) != 1:
        raise FhirError(422, f"{where}: the path {path!r} names {len(targets)} elements, not one",
                        code="processing", expression=where)
    return targets[0]


def _apply(root: dict[str, Any], rtype: str, kind: str, path: str, parts: dict[str, Any], where: str) -> None:
    targets = _resolve(root, rtype, path, where)
    if kind == "delete":
        if not targets:
            return  # deleting what is not there is not an error (fhirpatch.html)
        parent, key = _one(targets, path, where)
        if parent is None:
            raise bad_request(f"{where}: cannot delete the resource itself", expression=where)
        del parent[key]
        if not parent:  # the element left with nothing is no element either (ele-1): the list, or the object
            _drop_empty(root)
        return
    if kind == "replace":
        parent, key = _one(targets, path, where)
        if parent is None:
            raise bad_request(f"{where}: cannot replace the resource itself", expression=where)
        parent[key] = _value(parts.get("value"))
        return
    if kind == "add":
        name = _value(parts.get("name"))
        value = _value(parts.get("value"))
        if not isinstance(name, str) or value is None:
            raise bad_request(f"{where}: add needs a name and a value", expression=where)
        parent, key = _one(targets, path, where)
        node = root if parent is None else parent[key]
        if not isinstance(node, dict):
            raise FhirError(422, f"{where}: {path} is not an element that can hold {name}", code="processing")
        existing = node.get(name)
        if isinstance(existing, list):
            existing.append(value)
        elif existing is None:
            node[name] = [value] if _repeats(rtype, _split(path), name) else value
        else:
            raise FhirError(422, f"{where}: {path}.{name} is there already and does not repeat: replace it",
                            code="processing", expression=where)
        return
    if kind in ("insert", "move"):
        seq = _list_at(root, rtype, path, where, create=kind == "insert")
        if kind == "insert":
            index = _value(parts.get("index"))
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= len(seq):
                raise bad_request(f"{where}: insert needs an index from 0 to {len(seq)}", expression=where)
            seq.insert(index, _value(parts.get("value")))
        else:
            source, dest = _value(parts.get("source")), _value(parts.get("destination"))
            if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(seq) for x in (source, dest)):
                raise bad_request(f"{where}: move needs a source and destination within the list", expression=where)
            seq.insert(dest, seq.pop(source))


def _list_at(root: dict[str, Any], rtype: str, path: str, where: str, create: bool) -> list[Any]:
    """The list a path names (fhirpatch.html: insert and move name the repeating element, `Patient.name`, whose
    items are the list): its parent is resolved to one element, and the last step names the list in it. `create`:
    an absent list of an element that repeats is made (insert at 0)."""
    steps = _split(path)
    last = _STEP.match(steps[-1]) if len(steps) > 1 else None
    if last is None or last.group(2) is not None:
        raise bad_request(f"{where}: the path of insert and move names a repeating element (no index, no filter)",
                          expression=where)
    name = last.group(1)
    parent, key = _one(_resolve(root, rtype, ".".join(steps[:-1]), where), ".".join(steps[:-1]), where)
    node = root if parent is None else parent[key]
    if not isinstance(node, dict) or _repeats(rtype, steps[:-1], name) is False:
        raise FhirError(422, f"{where}: {path} is not a list", code="processing", expression=where)
    seq = node.get(name)
    if seq is None and create:
        seq = node[name] = []
    if not isinstance(seq, list):
        raise FhirError(422, f"{where}: {path} is not a list", code="processing", expression=where)
    return seq


def _repeats(rtype: str, steps: list[str], name: str) -> bool | None:
    """Whether element `name` repeats in the element the path `steps` names, from the R4 definitions; None when
    the path leaves them (an extension's contents, a contained resource)."""
    types = load_structure(PROFILES_DIR).types
    tname = rtype
    for step in steps[1:]:
        if _WHERE.match(step):
            continue
        m = _STEP.match(step)
        element = types[tname].elements.get(m.group(1)) if m and tname in types else None
        if element is None:
            return None
        tname = element.type
    element = types[tname].elements.get(name) if tname in types else None
    return element.many if element is not None else None


def _drop_empty(node: Any, shadow: bool = False) -> None:
    """Remove what a delete left empty, innermost first, so that emptying an element empties its parent in turn
    (`Organization.partOf.reference` takes `partOf` with it). In a primitive's `_name` list an item stands for
    its place: an emptied one becomes null instead, and a list of nulls goes."""
    if isinstance(node, dict):
        for k, v in node.items():
            _drop_empty(v, k.startswith("_"))
        for k in [k for k, v in node.items() if v == [] or v == {} or (k.startswith("_") and _all_null(v))]:
            del node[k]
    elif isinstance(node, list):
        for v in node:
            _drop_empty(v)
        if shadow:
            node[:] = [None if v == {} else v for v in node]
        else:
            node[:] = [v for v in node if v != [] and v != {}]


def _all_null(value: Any) -> bool:
    return isinstance(value, list) and all(v is None for v in value)
