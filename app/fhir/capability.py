"""GET /metadata: a CapabilityStatement generated from what is really implemented: the resource types and
interactions of fhir_profiles/resource-types.json, the search parameters of the registry, the operations
of the operation table, and the security extensions the auth layer registers.

`?mode=` (http.html#capabilities): R4 defines `full` (the default), `normative` and `terminology`, and lets a
server ignore the parameter and answer its CapabilityStatement. `full` and `normative` answer the whole statement
(CapabilityStatement is normative in R4, all of it); `terminology` asks for a TerminologyCapabilities, which this
server (no terminology service) does not have: it answers the CapabilityStatement, as R4 allows. `terse`, not an
R4 mode, answers the statement without its prose (`terse`). Any other mode is a 400 naming `mode`
(`mode_of`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.core.errors import bad_request
from app.core.timeutil import to_instant, utcnow
from app.services import Services

COMMON = ("_id", "_lastUpdated", "_tag", "_profile", "_security")
PATIENT_COMPARTMENT = "http://hl7.org/fhir/CompartmentDefinition/patient"
# Parameters the search parser reads itself (app/search/parser.py), with no SearchParameter behind them.
HAS_PARAM = {"name": "_has", "type": "special", "documentation": "Reverse chaining, one level (search.html#has)"}
COMPARTMENT_PARAM = {"name": "_compartment", "type": "reference",
                     "documentation": "Patient/[id]: in that patient's compartment through any of the type's "
                                      "compartment parameters (CompartmentDefinition/patient)"}
# The electronic health card's implementation guide (fhir_profiles): what every node of the programme serves.
IG_CAPABILITY = "https://ehc.example.cn/fhir/CapabilityStatement/ehc-node"


def published_profiles(profiles_dir: Path) -> dict[str, list[str]]:
    """resource type -> canonical URLs of the profiles fhir_profiles/StructureDefinition publishes for it."""
    out: dict[str, list[str]] = {}
    for path in sorted((profiles_dir / "StructureDefinition").glob("*.json")):
        sd = json.loads(path.read_text(encoding="utf-8"))
        if sd.get("kind") == "resource" and sd.get("derivation") == "constraint" and sd.get("url"):
            out.setdefault(sd["type"], []).append(sd["url"])
    return out


def in_patient_compartment(svc: Services, rtype: str) -> bool:
    """Whether `_compartment=Patient/<id>` (and so Patient/<id>/<rtype>) can select this type: it has a
    compartment parameter the registry serves, as app.search.parser._compartment requires."""
    return any(svc.registry.get(rtype, c) is not None for c in svc.registry.compartment.get(rtype, []))


def search_params(svc: Services, rtype: str) -> list[dict[str, Any]]:
    params = svc.registry.params(rtype)
    out = [{"name": c, "type": p.type, **({"definition": p.url} if getattr(p, "url", None) else {})}
           for c, p in sorted(params.items()) if c not in COMMON]
    if in_patient_compartment(svc, rtype):
        out.append(COMPARTMENT_PARAM)
    return out


def capability_statement(svc: Services, base: str, operations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    published = published_profiles(svc.profiles_dir)
    resources = []
    for rtype, conf in sorted(svc.resource_types.items()):
        params = svc.registry.params(rtype)
        interactions = conf["interactions"]
        writable = "update" in interactions
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned-update" if writable else "versioned",
            "readHistory": "vread" in interactions and writable,  # past versions exist only where updates do
            "updateCreate": writable,
            "conditionalCreate": "create" in interactions,
            "conditionalRead": "full-support",
            "conditionalUpdate": writable,
            "conditionalDelete": "single" if "delete" in interactions else "not-supported",
            # not "local": references to other servers are stored (and not resolved)
            "referencePolicy": ["literal", "logical", "enforced"],
            # the wildcard is `Type:*` (search.html#include); `_include=*` is refused
            "searchInclude": [f"{rtype}:*", *sorted(f"{rtype}:{c}" for c, p in params.items()
                                                     if p.type == "reference")],
            "searchRevInclude": sorted(f"{src}:{c}" for src in svc.resource_types
                                       for c, p in svc.registry.params(src).items()
                                       if p.type == "reference" and (not p.target or rtype in p.target)),
            "searchParam": search_params(svc, rtype),
        }
        profiles = published.get(rtype)
        if profiles:
            entry["supportedProfile"] = profiles
        ops = [{"name": name, "definition": op["definition"]} for name, op in sorted(operations.items())
               if op.get("types") == "*" or rtype in op.get("types", ())]
        if ops:
            entry["operation"] = ops
        resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
        "searchParam": [*({"name": c, "type": p.type, **({"definition": p.url} if p.url else {})} for c in COMMON
                          if (p := svc.registry.get("Patient", c)) is not None), HAS_PARAM],
        "compartment": [PATIENT_COMPARTMENT],  # Patient/{id}/{type} (routes.py)
    }
    system_ops = [{"name": name, "definition": op["definition"]} for name, op in sorted(operations.items())
                  if "system" in op.get("levels", ())]
    if system_ops:  # an empty list is invalid FHIR (every array has at least one element)
        rest["operation"] = system_ops
    security = svc.extensions.get("capability_security")
    if security:
        rest["security"] = security
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": to_instant(utcnow()),
        "publisher": "ehc-fhir",
        "kind": "instance",
        "software": {"name": "ehc-fhir", "version": "0.1.0"},
        "implementation": {"description": "电子健康卡 FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "instantiates": [IG_CAPABILITY],
        "format": ["application/fhir+json", "json", "application/fhir+xml", "xml"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"],
        "rest": [rest],
    }


MODES = ("full", "normative", "terminology", "terse")
# Prose: what a person reads about a capability, not what the server declares it supports.
PROSE_TOP = ("text", "description", "purpose", "copyright")  # implementation.description (1..1) stays


def mode_of(values: list[str]) -> str:
    """The mode `GET metadata` was asked for (`values`: those of `mode` in the query); 400 naming `mode` for one
    that is not in MODES, or for more than one."""
    if len(values) > 1:
        raise bad_request("mode may be given once", expression="mode")
    mode = values[0] if values else "full"
    if mode not in MODES:
        raise bad_request(f"unknown mode {mode!r}: one of {', '.join(MODES)}", expression="mode",
                          code="not-supported")
    return mode


def terse(statement: dict[str, Any]) -> dict[str, Any]:
    """The statement without its prose, what is not needed to know what the server supports: the narrative,
    `description`, `purpose`, `copyright`, `rest.security.description`, and every `documentation` (of rest, of a
    resource, of its interactions, search parameters and operations). Everything the server declares stays, as
    does `implementation.description`, which R4 requires."""
    out = _without(statement, "documentation")
    for name in PROSE_TOP:
        out.pop(name, None)
    for rest in out.get("rest", []):
        if isinstance(rest.get("security"), dict):
            rest["security"].pop("description", None)
    return out


def _without(node: Any, name: str) -> Any:
    """A copy of `node` without the key `name` at any depth."""
    if isinstance(node, dict):
        return {k: _without(v, name) for k, v in node.items() if k != name}
    if isinstance(node, list):
        return [_without(v, name) for v in node]
    return node
