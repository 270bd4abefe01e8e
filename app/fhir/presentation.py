"""_summary and _elements (search.html#summary, #elements): what of a resource goes on the wire."""

from __future__ import annotations

from typing import Any

from app.core.errors import Issue, bad_request
from app.core.ids import new_id

# Elements marked isSummary in R4 for the types we serve (plus the always-present ones).
_ALWAYS = {"resourceType", "id", "meta"}
SUMMARY_ELEMENTS: dict[str, set[str]] = {
    "Patient": {"identifier", "active", "name", "telecom", "gender", "birthDate", "deceasedBoolean",
                "deceasedDateTime", "address", "managingOrganization", "link"},
    "Observation": {"identifier", "basedOn", "partOf", "status", "category", "code", "subject", "focus",
                    "encounter", "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued",
                    "performer", "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean",
                    "valueInteger", "valueDateTime", "dataAbsentReason", "hasMember", "derivedFrom"},
    "DocumentReference": {"masterIdentifier", "identifier", "status", "docStatus", "type", "category",
                          "subject", "date", "author", "authenticator", "custodian", "relatesTo",
                          "description", "securityLabel", "content"},
    "Organization": {"identifier", "active", "type", "name", "alias", "partOf"},
    "Practitioner": {"identifier", "active", "name", "telecom", "address", "gender", "birthDate"},
    "RelatedPerson": {"identifier", "active", "patient", "relationship", "name", "telecom", "gender",
                      "birthDate", "address"},
    "Consent": {"identifier", "status", "scope", "category", "patient", "dateTime", "performer",
                "organization", "sourceAttachment", "sourceReference", "policyRule", "provision"},
    "Binary": {"contentType", "securityContext"},
}
SUMMARY_MODES = {"true", "false", "text", "data", "count"}


def _subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    tags.append({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"})
    meta["tag"] = tags
    out = dict(resource)
    out["meta"] = meta
    return out


def apply_summary(resource: dict[str, Any], mode: str | None) -> dict[str, Any]:
    if mode in (None, "false"):
        return resource
    if mode not in SUMMARY_MODES:
        raise bad_request(f"_summary must be one of {', '.join(sorted(SUMMARY_MODES))}", expression="_summary")
    rtype = resource.get("resourceType", "")
    if mode == "true":
        keep = _ALWAYS | SUMMARY_ELEMENTS.get(rtype, set())
    elif mode == "text":
        keep = _ALWAYS | {"text"}
    elif mode == "data":
        return _subsetted({k: v for k, v in resource.items() if k != "text"})
    else:
        return resource
    return _subsetted({k: v for k, v in resource.items() if k in keep})


def apply_elements(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    if not elements:
        return resource
    wanted = {e.split(".")[-1] if "." in e else e for e in elements}
    return _subsetted({k: v for k, v in resource.items() if k in _ALWAYS or k in wanted})


def outcome_entry(issues: list[Issue]) -> dict[str, Any]:
    """A Bundle entry holding an OperationOutcome about the search (search.mode `outcome`). Its fullUrl is a
    urn:uuid, which R4 requires to be a UUID (Bundle.entry.fullUrl: bdl-7, RFC 4122)."""
    return {"fullUrl": f"urn:uuid:{new_id()}",
            "resource": {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]},
            "search": {"mode": "outcome"}}
