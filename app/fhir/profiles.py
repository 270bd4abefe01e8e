"""The profiles published in fhir_profiles/StructureDefinition, applied on top of the R4 validation.

For a profile (a StructureDefinition with derivation `constraint` on a resource type) the differential is
read once: required elements and element cardinality on the resource's own elements, slices discriminated
by a fixed value (identifier slices by `system`), and invariants (FHIRPath, evaluated with fhirpathpy) on the
resource, on an element or on a slice. Used by `$validate?profile=` and for resources that declare the
profile in meta.profile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fhirpathpy import evaluate

from app.core.errors import Issue


@dataclass
class Slice:
    name: str
    element: str  # the sliced element of the resource ("identifier")
    key: str  # the discriminator path ("system")
    value: str  # the fixed value
    min: int
    max: int  # -1: unbounded


@dataclass
class Invariant:
    key: str
    human: str
    expression: str
    on: str  # "" (the resource), an element ("identifier") or a slice ("identifier:residentIdCard")


@dataclass
class Profile:
    url: str
    type: str
    cardinality: dict[str, tuple[int, int]] = field(default_factory=dict)  # element -> (min, max)
    slices: list[Slice] = field(default_factory=list)
    invariants: list[Invariant] = field(default_factory=list)


def _max(value: str | None) -> int:
    return -1 if value is None or value == "*" else int(value)


def parse_profile(sd: dict[str, Any]) -> Profile:
    rtype = sd["type"]
    prof = Profile(sd["url"], rtype)
    discriminators: dict[str, str] = {}
    pending: dict[str, Slice] = {}
    for el in sd.get("differential", {}).get("element", []):
        eid: str = el.get("id", el["path"])
        rel = eid[len(rtype) + 1:] if eid != rtype else ""
        for c in el.get("constraint", []):
            if c.get("severity") == "error" and c.get("expression"):
                prof.invariants.append(Invariant(c["key"], c.get("human", ""), c["expression"], rel))
        if "slicing" in el:
            discriminators[rel] = el["slicing"]["discriminator"][0]["path"]
        if el.get("sliceName") and ":" in rel and "." not in rel:
            elem, name = rel.split(":", 1)
            pending[rel] = Slice(name, elem, discriminators.get(elem, ""), "", int(el.get("min", 0)),
                                 _max(el.get("max")))
        elif ":" in rel and "." in rel:
            base, _, child = rel.partition(".")
            fixed = next((v for k, v in el.items() if k.startswith(("fixed", "pattern"))), None)
            if base in pending and child == pending[base].key and isinstance(fixed, str):
                pending[base].value = fixed
        elif rel and "." not in rel and ("min" in el or "max" in el):
            prof.cardinality[rel] = (int(el.get("min", 0)), _max(el.get("max")))
    prof.slices = [s for s in pending.values() if s.value]
    return prof


class Profiles:
    def __init__(self, profiles: dict[str, Profile]) -> None:
        self.by_url = profiles

    def check(self, resource: dict[str, Any], url: str) -> list[Issue]:
        prof = self.by_url.get(url.split("|")[0])
        rtype = resource.get("resourceType")
        if prof is None:
            return [Issue(f"the profile {url} is not known to this server (see fhir_profiles/StructureDefinition)",
                          "not-supported", expression=["profile"])]
        if prof.type != rtype:
            return [Issue(f"the profile {url} constrains {prof.type}, not {rtype}", "invalid",
                          expression=["resourceType"])]
        out: list[Issue] = []
        for elem, (mn, mx) in prof.cardinality.items():
            n = _count(resource.get(elem))
            if n < mn or (mx >= 0 and n > mx):
                out.append(Issue(f"{rtype}.{elem}: {n} present; the profile allows {mn}..{'*' if mx < 0 else mx}",
                                 "required" if n < mn else "structure", expression=[f"{rtype}.{elem}"]))
        for sl in prof.slices:
            items = [x for x in resource.get(sl.element) or [] if isinstance(x, dict) and x.get(sl.key) == sl.value]
            n = len(items)
            if n < sl.min or (sl.max >= 0 and n > sl.max):
                out.append(Issue(f"{rtype}.{sl.element}: {n} with {sl.key} {sl.value} (slice {sl.name}); the profile "
                                 f"allows {sl.min}..{'*' if sl.max < 0 else sl.max}", "structure",
                                 expression=[f"{rtype}.{sl.element}"]))
        for inv in prof.invariants:
            out.extend(self._invariant(resource, rtype, inv, prof))
        return out

    def _invariant(self, resource: dict[str, Any], rtype: str, inv: Invariant, prof: Profile) -> list[Issue]:
        targets: list[tuple[str, Any]]
        if not inv.on:
            targets = [(rtype, resource)]
        else:
            elem, _, slice_name = inv.on.partition(":")
            items = resource.get(elem)
            items = items if isinstance(items, list) else [items] if items is not None else []
            sl = next((s for s in prof.slices if s.element == elem and s.name == slice_name), None)
            targets = [(f"{rtype}.{elem}[{i}]", x) for i, x in enumerate(items)
                       if sl is None or (isinstance(x, dict) and x.get(sl.key) == sl.value)]
        out: list[Issue] = []
        for path, node in targets:
            try:
                result = evaluate(node, inv.expression, {"resource": resource})
            except Exception as err:  # an expression fhirpathpy cannot run is the profile's fault: report it
                out.append(Issue(f"{path}: invariant {inv.key} could not be evaluated ({err})", "processing",
                                 "warning", [path]))
                continue
            if result != [True] and result != []:
                out.append(Issue(f"{path}: {inv.human} ({inv.key})", "invariant", expression=[path]))
        return out


def _count(value: Any) -> int:
    if value is None:
        return 0
    return len(value) if isinstance(value, list) else 1


@cache
def load_profiles(profiles_dir: Path) -> Profiles:
    out: dict[str, Profile] = {}
    for path in sorted((profiles_dir / "StructureDefinition").glob("*.json")):
        sd = json.loads(path.read_text(encoding="utf-8"))
        if sd.get("kind") == "resource" and sd.get("derivation") == "constraint":
            prof = parse_profile(sd)
            out[prof.url] = prof
    return Profiles(out)
