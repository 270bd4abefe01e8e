"""Evaluate SearchParameter.expression (FHIRPath, http://hl7.org/fhirpath/N1) over resource JSON.

Most R4 search expressions are simple paths: `Patient.name.family`, `(Observation.value.ofType(Quantity))`,
`Patient.telecom.where(system='phone')`, `Observation.subject.where(resolve() is Patient)`. Those are compiled
here into a list of steps and walked directly over the JSON (about 50 times faster than a general
interpreter). Anything else is handed to fhirpathpy with the R4 model; `resolve() is X` is rewritten first
into a test on the reference's type, since a search index cannot resolve references.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from app.core.ids import reference_type

Evaluator = Callable[[dict[str, Any]], list[Any]]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_WHERE_EQ = re.compile(r"^where\(\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*'([^'\\]*)'\s*\)$")
_WHERE_RESOLVE = re.compile(r"^where\(\s*resolve\(\)\s+is\s+([A-Z][A-Za-z]*)\s*\)$")
_OF_TYPE = re.compile(r"^ofType\(\s*([A-Za-z][A-Za-z]*)\s*\)$")
_RESOLVE_IS = re.compile(r"resolve\(\)\s+is\s+([A-Z][A-Za-z]*)")
# Suffixes of choice elements (value[x] -> valueQuantity): FHIR R4 data types, capitalised as in JSON.
_CHOICE_TYPES = frozenset(
    "Boolean Integer String Decimal Uri Url Canonical Base64Binary Instant Date DateTime Time Code Oid Id "
    "Markdown UnsignedInt PositiveInt Uuid Address Age Annotation Attachment CodeableConcept Coding "
    "ContactPoint Count Distance Duration HumanName Identifier Money Period Quantity Range Ratio Reference "
    "SampledData Signature Timing ContactDetail Contributor DataRequirement Expression ParameterDefinition "
    "RelatedArtifact TriggerDefinition UsageContext Dosage Meta".split()
)
# 'X.exists() and X != false' (Patient.deceased): true when X is there and is not the boolean false.
_PRESENT_NOT_FALSE = re.compile(r"^([A-Za-z][A-Za-z0-9_.]*)\.exists\(\)\s+and\s+\1\s*!=\s*false$")


def split_top(expr: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and quotes."""
    parts: list[str] = []
    depth = 0
    quote = False
    start = 0
    for i, ch in enumerate(expr):
        if ch == "'":
            quote = not quote
        elif quote:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    parts.append(expr[start:])
    return [p.strip() for p in parts]


def _unwrap(part: str) -> str:
    """'(A.b.ofType(X)).text' -> 'A.b.ofType(X).text' when the leading parenthesis only groups."""
    if not part.startswith("("):
        return part
    depth = 0
    for i, ch in enumerate(part):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return _unwrap(part[1:i].strip()) + part[i + 1 :].strip()
    return part


def restrict_to_type(expression: str, resource_type: str) -> str:
    """Keep the union branches of `expression` for `resource_type` ('Resource.x' becomes 'Type.x')."""
    kept = []
    for part in split_top(expression, "|"):
        head = _unwrap(part)
        if head.startswith("Resource."):
            kept.append(f"{resource_type}." + head[len("Resource.") :])
        elif head == resource_type or head.startswith(resource_type + "."):
            kept.append(part)
    return " | ".join(kept)


# A step is one of: ("field", name) ("type", T) ("eq", field, literal) ("ref", T)
Step = tuple[str, ...]


def _parse_simple(part: str) -> tuple[str, list[Step]] | None:
    segs = split_top(_unwrap(part), ".")
    if not segs or not _NAME.match(segs[0]):
        return None
    steps: list[Step] = []
    for seg in segs[1:]:
        if _NAME.match(seg):
            steps.append(("field", seg))
        elif m := _OF_TYPE.match(seg):
            steps.append(("type", m.group(1)))
        elif m := _WHERE_EQ.match(seg):
            steps.append(("eq", m.group(1), m.group(2)))
        elif m := _WHERE_RESOLVE.match(seg):
            steps.append(("ref", m.group(1)))
        else:
            return None
    return segs[0], steps


def _walk(resource: dict[str, Any], root: str, steps: list[Step]) -> list[Any]:
    if resource.get("resourceType") != root:
        return []
    # Items carry the choice type they were found under ('Quantity' for valueQuantity), for ofType().
    items: list[tuple[Any, str | None]] = [(resource, None)]
    for step in steps:
        kind = step[0]
        out: list[tuple[Any, str | None]] = []
        if kind == "field":
            name = step[1]
            for node, _ in items:
                if not isinstance(node, dict):
                    continue
                if name in node:
                    found: list[tuple[Any, str | None]] = [(node[name], None)]
                else:
                    n = len(name)  # a choice element: value[x] stored as valueQuantity, valueString ...
                    found = [
                        (v, k[n:]) for k, v in node.items() if k.startswith(name) and k[n:] in _CHOICE_TYPES
                    ]
                for val, typ in found:
                    if isinstance(val, list):
                        out.extend((v, typ) for v in val if v is not None)
                    elif val is not None:
                        out.append((val, typ))
        elif kind == "type":
            want = step[1][:1].upper() + step[1][1:]
            out = [(v, t) for v, t in items if t == want]
        elif kind == "eq":
            out = [(v, t) for v, t in items if isinstance(v, dict) and v.get(step[1]) == step[2]]
        else:  # "ref"
            out = [(v, t) for v, t in items if reference_type(v) == step[1]]
        items = out
        if not items:
            return []
    return [v for v, _ in items]


def _fallback(expression: str) -> Evaluator:
    from fhirpathpy import compile as fp_compile
    from fhirpathpy.models import models

    # fhirpathpy cannot resolve(): test the type prefix of the reference text instead.
    rewritten = _RESOLVE_IS.sub(
        lambda m: f"(reference.startsWith('{m.group(1)}/') or reference.contains('/{m.group(1)}/'))",
        expression,
    )
    fn = fp_compile(rewritten, models["r4"])

    def run(resource: dict[str, Any]) -> list[Any]:
        return [v for v in fn(resource, {}) if v is not None]

    return run


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> Evaluator:
    """A function resource -> list of values (JSON nodes) for a FHIRPath expression; cached."""
    if m := _PRESENT_NOT_FALSE.match(expression.strip()):
        inner = _parse_simple(m.group(1))
        if inner is not None:
            root, steps = inner

            def present(resource: dict[str, Any]) -> list[Any]:
                if resource.get("resourceType") != root:
                    return []
                return [any(v is not False for v in _walk(resource, root, steps))]

            present.fast = True  # type: ignore[attr-defined]
            return present
    parts = [_parse_simple(p) for p in split_top(expression, "|")] if expression.strip() else []
    if parts and all(p is not None for p in parts):
        simple = [p for p in parts if p is not None]

        def run(resource: dict[str, Any]) -> list[Any]:
            out: list[Any] = []
            for root, steps in simple:
                out.extend(_walk(resource, root, steps))
            return out

        run.fast = True  # type: ignore[attr-defined]
        return run
    return _fallback(expression)
