"""The core R4 invariants (ElementDefinition.constraint, severity error), evaluated with fhirpathpy.

fhir_profiles/invariants.json (scripts/gen_invariants.py) lists them by structure-table type: a resource, a data
type (per-1 on Period) or a backbone element (pat-1 on Patient.contact), each on the type itself or on one of its
elements. The validator collects, while it walks a resource, every object whose type has invariants; once the
walk found no structural error, `Invariants.check` runs those invariants on them.

Cost: most invariants are disjunctions guarded by the presence of an element (`code.empty() or system.exists()`).
Each expression's top-level disjuncts are read once into shortcuts decided with dictionary lookups (an element
absent, present, or a code equal to a literal); fhirpathpy runs only when no shortcut decides the invariant, with
the expression compiled once, on first use.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from app.core.errors import bad_request
from app.fhir.structure import Structure, TypeDef

TABLE = "invariants.json"
MAX_RUNS = 5000  # fhirpathpy runs for one resource (a Bundle with its entries): about half a second
_R4 = models["r4"]


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath hasValue() (fhirpathpy 2.2.4 lacks it): one primitive with a value, not only extensions.
    (fhirpathpy hands a user function the data of its input items.)"""
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], dict | list)]


def _no_trace(_label: str, _items: Any) -> None:
    """trace() (sdf-16, que-1 ...) is for debugging: fhirpathpy would print to stdout."""


_OPTIONS = {"userInvocationTable": {"hasValue": {"fn": _has_value}}, "traceFn": _no_trace}


# Shortcuts: a top-level disjunct (or an `implies` antecedent or consequent) whose truth dictionary lookups decide.
_STEP = r"\.(?:first\(\)|(?:where|select|ofType)\((?:[^()]|\([^()]*\))*\))"
_PATH = r"([a-z]\w*(?:\.[a-z]\w*)*)"
# `path<steps>.empty()`, `name.hasValue().not()`, `name.exists().not()`: true when the element is absent
_ABSENT = re.compile(rf"{_PATH}(?:{_STEP})*\.empty\(\)|([a-z]\w*)\.(?:hasValue|exists)\(\)\.not\(\)")
_PRESENT = re.compile(r"([a-z]\w*)\.exists\(\)")  # true when the element has a value
_EQUALS = re.compile(r"([a-z]\w*) = '([^'\\]*)'")  # true when the code is that literal
_LACKS = re.compile(r"([a-z]\w*)\.contains\('([^'\\]*)'\)\.not\(\)")  # true when the string lacks the literal
# antecedents of `implies` (the invariant holds when they are false or empty)
_IF_PRESENT = re.compile(rf"{_PATH}(?:{_STEP})*\.exists\(\)")
# a comparison of two elements (per-1 `start <= end`)
_COMPARED = re.compile(r"\b([a-z]\w*) (<=|>=|<|>) ([a-z]\w*)\b")
_ORDER = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_DATED = frozenset({"date", "dateTime", "instant"})

Steps = tuple[tuple[str, ...], ...]  # a path of elements, each step the JSON names it may take (a choice: several)


@dataclass(frozen=True, slots=True)
class Shortcut:
    """The invariant holds for an object when `kind` holds: absent (nothing at `path`, not even a `_name`
    extension), present (the first step's element has a value), equals / differs (it is the string `literal`;
    another string), lacks (it is a string without `literal`)."""

    kind: str
    path: Steps
    literal: str = ""

    def holds(self, obj: dict[str, Any]) -> bool:
        if self.kind == "absent":
            return _absent(obj, self.path)
        if self.kind == "present":
            return any(obj.get(n) is not None for n in self.path[0])
        value = obj.get(self.path[0][0])
        if self.kind == "equals":
            return value == self.literal
        if self.kind == "lacks":
            return isinstance(value, str) and self.literal not in value
        # differs: another string (absent is undecided: `{} implies false` is empty, which fails)
        return isinstance(value, str) and value != self.literal


def _absent(obj: dict[str, Any], path: Steps) -> bool:
    names, rest = path[0], path[1:]
    for n in names:
        if "_" + n in obj:
            return False
        value = obj.get(n)
        if value is None:
            continue
        if not rest:
            return False
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict) or not _absent(item, rest):
                return False
    return True


def _bundle_requests(kind: str, types: frozenset[str]) -> Callable[[dict[str, Any]], bool]:
    """bdl-3 / bdl-4: each entry has a request (response) exactly when the Bundle's type is one of `types`."""
    def proven(bundle: dict[str, Any]) -> bool:
        want = bundle.get("type") in types
        return all(isinstance(e, dict) and (kind in e) == want for e in bundle.get("entry") or [])
    return proven


def _bundle_full_urls(bundle: dict[str, Any]) -> bool:
    """bdl-7: fullUrl & resource.meta.versionId distinct over the entries with a fullUrl."""
    seen: set[str] = set()
    for e in bundle.get("entry") or []:
        url = e.get("fullUrl") if isinstance(e, dict) else None
        if url is None:
            continue
        meta = (e.get("resource") or {}).get("meta") or {}
        version = meta.get("versionId") if isinstance(meta, dict) else None
        if not isinstance(url, str) or "_fullUrl" in e or not isinstance(version, str | None):
            return False
        key = url + (version or "")
        if key in seen:
            return False
        seen.add(key)
    return True


# Proofs in Python that an invariant holds (or is left to a more precise check), by key, for those that
# fhirpathpy takes milliseconds over on a Bundle of tens of entries (it interprets each expression node by node).
# Only ever a proof: when one does not hold, fhirpathpy decides, so a mistake here can let a bad Bundle through
# but never refuse a good one.
_PROOFS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "bdl-3": _bundle_requests("request", frozenset({"batch", "transaction", "history"})),
    "bdl-4": _bundle_requests("response", frozenset({"batch-response", "transaction-response", "history"})),
    # a transaction or batch: app/fhir/bundles.py refuses a repeated fullUrl itself, naming the entry's fullUrl
    # (whatever the versionIds: it binds references by fullUrl), so the Bundle-wide issue is left to it
    "bdl-7": lambda b: b.get("type") in ("history", "transaction", "batch") or _bundle_full_urls(b),
}


@dataclass(slots=True)
class Invariant:
    key: str
    human: str
    expression: str
    element: tuple[tuple[str, str], ...]  # the element it sits on: (JSON name, type); () for the type itself
    base: str  # the type path fhirpathpy reads the node as
    shortcuts: tuple[Shortcut, ...]
    proof: Callable[[dict[str, Any]], bool] | None = None
    dated: tuple[tuple[str, str, str], ...] = ()  # (element, operator, element): dates the expression compares
    evaluated: str = ""  # the expression as fhirpathpy runs it (see _for_fhirpathpy)
    _run: Callable[..., list[Any]] | None = field(default=None, repr=False)

    def holds(self, node: Any, resource: dict[str, Any], base: str = "") -> bool:
        return self.decided(node) or self.evaluate(node, resource, base)

    def decided(self, node: Any) -> bool:
        """Whether a shortcut or a proof shows that the invariant holds, without fhirpathpy."""
        if isinstance(node, dict):
            for s in self.shortcuts:
                if s.holds(node):
                    return True
            if self.proof is not None and self.proof(node):
                return True
        return False

    def evaluate(self, node: Any, resource: dict[str, Any], base: str = "") -> bool:
        """The invariant by fhirpathpy (about 0.1 ms a run)."""
        if self._run is None:
            self._run = fhirpath_compile(self.evaluated or self.expression, _R4, _OPTIONS)
        if isinstance(node, dict) and "resourceType" in node:
            target: Any = node
        else:
            target = ResourceNode.create_node(node, base or self.base)
        try:
            result = self._run(target, {"resource": resource})
        except Exception:  # noqa: BLE001 - a fhirpathpy failure on a structurally valid resource is ours: never refuse
            return True
        if result == [True]:
            return True
        if isinstance(node, dict):
            for a, op, b in self.dated:
                decided = _by_precision(node.get(a), op, node.get(b))
                if decided is not None:
                    return decided
        # false, or empty: as the HL7 validator, an invariant that is not true fails (`type = 'string'` on a
        # parameter with no type is empty)
        return False


class Invariants:
    def __init__(self, table: dict[str, Any], structure: Structure) -> None:
        self.by_type: dict[str, tuple[Invariant, ...]] = {}
        for tname, rows in table["invariants"].items():
            tdef = structure.types[tname]
            self.by_type[tname] = tuple(_invariant(row, tdef, structure) for row in rows)

    def check(self, pending: Iterable[tuple[dict[str, Any], str, str, dict[str, Any]]],
              add: Callable[[str, str], bool]) -> None:
        """Run the invariants of each (object, type name, path, resource) collected by the validator. `add`
        records a broken one and says whether more are wanted (the validator keeps at most 100 issues).

        A body of many objects that only fhirpathpy can decide would cost 0.1 ms each (10 MB of them, about a
        minute of a worker): past MAX_RUNS interpreter runs the resource is refused as too costly to check."""
        runs = 0
        for obj, tname, path, resource in pending:
            for inv in self.by_type[tname]:
                for where, node, etype in _occurrences(inv, obj, path):
                    if inv.decided(node):
                        continue
                    runs += 1
                    if runs > MAX_RUNS:
                        raise bad_request(f"{where}: more elements than the server checks the invariants of in one "
                                          f"resource ({MAX_RUNS} evaluations): send it in parts", where,
                                          code="too-costly")
                    if not inv.evaluate(node, resource, etype) and not add(where, f"{inv.human} ({inv.key})"):
                        return


def _occurrences(inv: Invariant, obj: dict[str, Any], path: str) -> Iterator[tuple[str, Any, str]]:
    """(path, node, type) of each place the invariant applies to in `obj`: the object itself, or each value of
    the element it sits on."""
    if not inv.element:
        yield path, obj, ""
        return
    for name, etype in inv.element:
        value = obj.get(name)
        if value is None:
            continue
        many = isinstance(value, list)
        for i, item in enumerate(value if many else [value]):
            if item is not None:
                yield (f"{path}.{name}[{i}]" if many else f"{path}.{name}"), item, etype


def _invariant(row: list[str], tdef: TypeDef, structure: Structure) -> Invariant:
    key, human, expression, element = row
    if not element:
        dated = _dated(expression, tdef)
        return Invariant(key, human, expression, (), tdef.name, _shortcuts(expression, tdef, structure),
                         _PROOFS.get(key), dated, _for_fhirpathpy(expression, dated))
    # on an element: each JSON name (one per type of a choice) with the type path fhirpathpy reads it as
    names = tdef.groups.get(element) or (element,)
    on = tuple((n, tdef.elements[n].type) for n in names)
    sub = structure.types.get(on[0][1]) if len(on) == 1 else None
    return Invariant(key, human, expression, on, f"{tdef.name}.{element}",
                     _shortcuts(expression, sub, structure) if sub is not None else ())


def _shortcuts(expression: str, tdef: TypeDef, structure: Structure) -> tuple[Shortcut, ...]:
    """The shortcuts of an expression: its top-level disjuncts, or an `implies`' antecedent (false) and
    consequent's disjuncts (true), that have one."""
    parts = _top_level(expression, " implies ")
    if len(parts) > 2 or len(_top_level(expression, " xor ")) > 1:
        return ()
    if len(parts) == 1:
        return _disjuncts(expression, tdef, structure)
    antecedent = _unwrap(parts[0])
    out: list[Shortcut] = []
    m = _IF_PRESENT.fullmatch(antecedent)
    path = _steps(m.group(1), tdef, structure) if m else ()
    if path:
        out.append(Shortcut("absent", path))
    m = _EQUALS.fullmatch(antecedent)
    if m and m.group(1) in tdef.elements:
        out.append(Shortcut("differs", ((m.group(1),),), m.group(2)))
    return (*out, *_disjuncts(_unwrap(parts[1]), tdef, structure))


def _disjuncts(expression: str, tdef: TypeDef, structure: Structure) -> tuple[Shortcut, ...]:
    out: list[Shortcut] = []
    for part in _top_level(expression, " or "):
        part = _unwrap(part)
        m = _ABSENT.fullmatch(part)
        path = _steps(m.group(1) or m.group(2), tdef, structure) if m else ()
        if path:
            out.append(Shortcut("absent", path))
            continue
        for kind, pattern in (("present", _PRESENT), ("equals", _EQUALS), ("lacks", _LACKS)):
            m = pattern.fullmatch(part)
            if m and m.group(1) in tdef.elements and (kind == "present" or m.group(1) not in tdef.groups):
                literal = m.group(2) if kind != "present" else ""
                out.append(Shortcut(kind, (_json_names(m.group(1), tdef),), literal))
    return tuple(out)


def _steps(dotted: str, tdef: TypeDef | None, structure: Structure) -> Steps:
    """The JSON names of each step of an element path, as far as the types are known (a shorter path is still
    a sound test of absence); () when the first step is not an element of the type."""
    out: list[tuple[str, ...]] = []
    for name in dotted.split("."):
        names = _json_names(name, tdef) if tdef is not None else ()
        if not names:
            break
        out.append(names)
        tdef = structure.types.get(tdef.elements[names[0]].type) if len(names) == 1 and tdef else None
    return tuple(out)


def _dated(expression: str, tdef: TypeDef) -> tuple[tuple[str, str, str], ...]:
    def is_date(name: str) -> bool:
        el = tdef.elements.get(name)
        return el is not None and el.type in _DATED
    return tuple((a, op, b) for a, op, b in _COMPARED.findall(expression) if is_date(a) and is_date(b))


def _for_fhirpathpy(expression: str, dated: tuple[tuple[str, str, str], ...]) -> str:
    """fhirpathpy 2.2.4 compares date elements as strings ("10:00:00Z" > "09:00:00+08:00"); converted with
    toDateTime() they compare as instants, time zones included."""
    for a, _, b in dated:
        expression = re.sub(rf"\b{a} (<=|>=|<|>) {b}\b", rf"{a}.toDateTime() \1 {b}.toDateTime()", expression)
    return expression


def _by_precision(a: Any, op: str, b: Any) -> bool | None:
    """Two dates of different precisions compared at the common one ("2024-06" <= "2024": equal there, which
    FHIRPath leaves empty, is no refusal); None when they have one precision (fhirpathpy decides). fhirpathpy
    2.2.4 answers false or empty where the common precision decides ("2024-01-02" <= "2024-01-03T01:00:00Z")."""
    if not isinstance(a, str) or not isinstance(b, str) or _precision(a) == _precision(b):
        return None
    common = min(len(a[:10]), len(b[:10]))
    return a[:common] == b[:common] or bool(_ORDER[op](a[:common], b[:common]))


def _precision(value: str) -> int:
    """Year, month, day or time (seconds and their fractions are one precision in FHIRPath comparisons)."""
    return 11 if "T" in value else len(value)


def _json_names(name: str, tdef: TypeDef) -> tuple[str, ...]:
    """The JSON names of an element of the type (a choice: one per type); () when it is not one."""
    if name in tdef.groups:
        return tdef.groups[name]
    return (name,) if name in tdef.elements and tdef.elements[name].choice is None else ()


def _top_level(expression: str, operator: str) -> list[str]:
    """`expression` split on `operator` outside parentheses and string literals."""
    parts: list[str] = []
    depth, start, quoted, i = 0, 0, False, 0
    while i < len(expression):
        ch = expression[i]
        if ch == "'" and (i == 0 or expression[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif depth == 0 and expression.startswith(operator, i):
                parts.append(expression[start:i])
                start = i + len(operator)
                i = start
                continue
        i += 1
    parts.append(expression[start:])
    return parts


def _unwrap(part: str) -> str:
    """The disjunct without whitespace and enclosing parentheses."""
    part = part.strip()
    while part.startswith("(") and part.endswith(")") and _balanced(part[1:-1]):
        part = part[1:-1].strip()
    return part


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


@cache
def load_invariants(profiles_dir: Path, structure: Structure) -> Invariants:
    path = profiles_dir / TABLE
    table = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"invariants": {}}
    return Invariants(table, structure)
