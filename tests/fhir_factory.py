"""Minimal valid instances of every R4 resource type, built from the structure table.

Each instance fills the required elements (recursively, the first type of a choice), one optional
primitive for content, a narrative, an extension with a decimal and, where the type names its patient
through `subject` or `patient` and may point at a Patient, a reference to `patient_id`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.fhirjson import FhirDecimal
from app.fhir.structure import ElementDef, Structure, load_structure

PROFILES = Path(__file__).resolve().parent.parent / "fhir_profiles"
STRUCTURE: Structure = load_structure(PROFILES)
SAMPLE = {
    "boolean": True, "integer": 1, "positiveInt": 1, "unsignedInt": 0, "string": "示例 x", "markdown": "**x**",
    "id": "x1", "uri": "http://example.org/x", "url": "http://example.org/x", "canonical": "http://example.org/x",
    "oid": "urn:oid:1.2.3", "uuid": "urn:uuid:8c4c0e5a-1111-4a4a-8a8a-000000000001", "date": "2024-01-02",
    "dateTime": "2024-01-02T03:04:05+08:00", "instant": "2024-01-02T03:04:05.000+08:00", "time": "10:00:00",
    "base64Binary": "aGVsbG8=", "code": "x",
    "xhtml": '<div xmlns="http://www.w3.org/1999/xhtml"><p>x</p></div>',
}
SKIP = {"id", "extension", "modifierExtension", "meta", "implicitRules", "language", "text", "contained"}


BY_NAME = {"contentType": "text/plain", "language": "zh-CN", "currency": "CNY", "mimeType": "text/plain"}


def _primitive(el: ElementDef) -> Any:
    if el.type == "code" and el.name in BY_NAME:
        return BY_NAME[el.name]
    if el.type == "decimal":
        return FhirDecimal("1.50")
    if el.type == "code" and el.codes:
        return sorted(el.codes)[0]
    return SAMPLE.get(el.type, "x")


def _value(el: ElementDef, depth: int) -> Any:
    if STRUCTURE.is_primitive(el.type):
        return _primitive(el)
    if el.type == "Reference":
        return {"display": "x"}
    if el.type == "Resource":
        return {"resourceType": "Basic", "code": {"text": "x"}}
    return fill(el.type, depth + 1)


def fill(type_name: str, depth: int = 0) -> dict[str, Any]:
    tdef = STRUCTURE.types[type_name]
    out: dict[str, Any] = {}
    for _label, names in tdef.required:
        el = tdef.elements[names[0]]
        v = _value(el, depth)
        out[el.name] = [v] if el.many else v
    if not any(k not in SKIP for k in out):
        for name in tdef.order:
            el = tdef.elements[name]
            if name in SKIP or el.choice or depth > 6:
                continue
            if STRUCTURE.is_primitive(el.type) and el.type != "xhtml":
                out[name] = [_primitive(el)] if el.many else _primitive(el)
                break
        else:
            for name in tdef.order:
                el = tdef.elements[name]
                if name not in SKIP and not el.choice and el.type not in ("Resource",):
                    v = _value(el, depth)
                    out[name] = [v] if el.many else v
                    break
    return out


# What the FHIRPath invariants of some types ask beyond the required elements (the HL7 validator checks them).
INVARIANTS: dict[str, dict[str, Any]] = {
    "AllergyIntolerance": {"clinicalStatus": {"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]}},
    "Appointment": {"status": "proposed", "participant": [{"actor": {"display": "x"}, "status": "accepted"}]},
    "AppointmentResponse": {"actor": {"display": "x"}},
    "CapabilityStatement": {"description": "x", "software": {"name": "x"}, "rest": [{"mode": "server"}]},
    "TerminologyCapabilities": {"description": "x", "software": {"name": "x"}},
    "Consent": {"policyRule": {"text": "x"}},
    "EventDefinition": {"trigger": [{"type": "named-event", "name": "x"}]},
    "ImmunizationRecommendation": {"recommendation": [{"vaccineCode": [{"text": "x"}],
                                                       "forecastStatus": {"text": "x"}}]},
    "InsurancePlan": {"name": "x"},
    "Organization": {"name": "x"},
    "Linkage": {"item": [{"type": "source", "resource": {"display": "a"}},
                         {"type": "alternate", "resource": {"display": "b"}}]},
    "SearchParameter": {"type": "token", "expression": "Patient.identifier", "base": ["Patient"]},
    "StructureDefinition": {"kind": "resource", "abstract": False, "type": "Patient",
                            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
                            "derivation": "constraint", "differential": {"element": [{"id": "Patient",
                                                                                      "path": "Patient"}]}},
}


def minimal(resource_type: str, patient_id: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": resource_type}
    res.update(fill(resource_type))
    res.update(INVARIANTS.get(resource_type, {}))
    tdef = STRUCTURE.types[resource_type]
    if "text" in tdef.elements:
        res["text"] = {"status": "generated",
                       "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{resource_type} 示例</p></div>'}
        res["extension"] = [{"url": "http://example.org/fhir/StructureDefinition/precision",
                             "valueDecimal": FhirDecimal("0.50")}]
    if patient_id:
        for name in ("subject", "patient"):
            el = tdef.elements.get(name)
            if el is not None and el.type == "Reference" and (el.targets is None or "Patient" in el.targets):
                ref = {"reference": f"Patient/{patient_id}"}
                res[name] = [ref] if el.many else ref
                break
    return res


def patient_linked(resource_type: str) -> str | None:
    """The element through which minimal(resource_type, pid) names its patient, if any."""
    tdef = STRUCTURE.types[resource_type]
    for name in ("subject", "patient"):
        el = tdef.elements.get(name)
        if el is not None and el.type == "Reference" and (el.targets is None or "Patient" in el.targets):
            return name
    return None
