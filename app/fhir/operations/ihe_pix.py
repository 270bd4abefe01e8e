"""Patient/$ihe-pix (IHE ITI-83 PIXm Query): the identifiers a resident holds in other systems.

GET Patient/$ihe-pix?sourceIdentifier=<system>|<value>[&targetSystem=<system>]...
POST Patient/$ihe-pix with a Parameters body: sourceIdentifier (valueIdentifier, or valueString <system>|<value>),
   targetSystem (valueUri, repeating). R4 operations.html: a server SHALL accept POST for every operation; it
   stores nothing, so GET is taken too. A POST takes its parameters from the body only: one in its URL is refused
   (400) rather than ignored. Both are read by pix_query, also the national node's (app.federation.web).
-> Parameters: targetIdentifier (valueIdentifier) for each identifier of the resident except the source,
   only of the target systems when given, and targetId (valueReference Patient/<id>).
Errors as PIXm says: 400 code-invalid for an unknown source system, 404 not-found for an unknown value,
403 code-invalid for an unknown target system. A target system may also be an identifier-system prefix
(urn:ehc:mrn:) to ask for every hospital's record number.
"""

from __future__ import annotations

from typing import Any

from app.core.access import AccessRecord
from app.core.errors import FhirError, bad_request, not_found
from app.fhir.http import FhirResponse
from app.fhir.parameters import read_parameters
from app.fhir.router import FhirRequest
from app.mpi.plugin import master_index
from app.services import Services


def _known(registry: Any, system: str) -> bool:
    doc = registry.document_for(system)
    return doc is not None or any(d.prefix and d.system == system for d in registry.documents)


_NAMES = ("sourceIdentifier", "targetSystem")


def pix_query(method: str, params: list[tuple[str, str]], body: Any) -> tuple[str, str, list[str]]:
    """(source system, source value, target systems) of a PIXm query: from the URL of a GET, from the Parameters
    body of a POST. 400 naming the parameter when the source is missing or has no system or no value."""
    if method != "POST":
        source = next((v for k, v in params if k == "sourceIdentifier"), None)
        return (*_split(source), [v for k, v in params if k == "targetSystem"])
    in_url = next((k for k, _ in params if k in _NAMES), None)
    if in_url is not None:
        raise bad_request(f"a POSTed $ihe-pix takes {in_url} in its Parameters body, not in the URL",
                          expression=in_url)
    parameters = read_parameters(body, "$ihe-pix")
    source = parameters.value("sourceIdentifier", "valueIdentifier", "valueString")
    if isinstance(source, dict):  # an Identifier: its system and value as they are, no "|" to split on
        system, value = source.get("system"), source.get("value")
        if not isinstance(system, str) or not isinstance(value, str) or not system or not value:
            raise bad_request("sourceIdentifier needs both a system and a value", expression="sourceIdentifier")
        pair = (system, value)
    else:
        pair = _split(source)
    return (*pair, parameters.values("targetSystem", "valueUri"))


def _split(source: str | None) -> tuple[str, str]:
    if not source or "|" not in source:
        raise bad_request("sourceIdentifier=<system>|<value> is required", expression="sourceIdentifier")
    system, value = source.split("|", 1)
    if not system or not value:
        raise bad_request("sourceIdentifier needs both a system and a value", expression="sourceIdentifier")
    return system, value


def handle(req: FhirRequest, svc: Services, type: str | None = None, id: str | None = None) -> FhirResponse:
    index = master_index(svc)
    system, value, targets = pix_query(req.method, req.params, req.body)
    if index.registry.document_for(system) is None:
        raise FhirError(400, f"sourceIdentifier system {system!r} is not known to this server", code="code-invalid",
                        expression="sourceIdentifier")
    for target in targets:
        if not _known(index.registry, target):
            raise FhirError(403, f"targetSystem {target!r} is not known to this server", code="code-invalid",
                            expression="targetSystem")
    svc.policy.require(req.principal, "read", "Patient")
    doc = req.gate.visible_or_none("Patient", index.find(system, value), "$ihe-pix", 404)
    if doc is None:  # unknown and withheld alike: the difference would tell whether the number is registered
        raise not_found(f"no resident holds {system}|{value}")
    try:
        normalised = index.normalise(system, value)
    except ValueError:
        normalised = value
    out: list[dict[str, Any]] = []
    for ident in doc["res"].get("identifier") or []:
        if not isinstance(ident, dict) or not ident.get("system") or not ident.get("value"):
            continue
        if ident["system"] == system and ident["value"] == normalised:
            continue
        if targets and not any(ident["system"] == t or (t.endswith(":") and ident["system"].startswith(t))
                               for t in targets):
            continue
        out.append({"name": "targetIdentifier", "valueIdentifier": ident})
    out.append({"name": "targetId", "valueReference": {"reference": f"Patient/{doc['_id']}"}})
    req.audit(AccessRecord("operation", "Patient", [doc["_id"]], "0", 200, req.principal, "$ihe-pix",
                                   patient_ids=[doc["_id"]], remote_addr=req.remote_addr))
    return FhirResponse(200, {"resourceType": "Parameters", "parameter": out})


OPERATION = {
    "handler": handle,
    "levels": ("type",),
    "types": ("Patient",),
    "methods": ("GET", "POST"),
    "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix",
}
