"""The owner function: whose record is this? (FHIR R4 CompartmentDefinition/patient)

One answer for every way a resource can name its patient, used by both access gates:
- a relative reference `Patient/<id>` (with or without `_history/<vid>`);
- an absolute URL of this server (`<base>/Patient/<id>`; any base this node answers on);
- a logical reference by identifier (`{"identifier": {system, value}}`, typed Patient or untyped), resolved through
  the master patient index;
- a contained resource (`#p1`): a contained Patient is resolved by its identifiers like a logical reference;
- Binary: its `securityContext` (a Patient, or the owner of the resource it names), else the DocumentReference that
  points to it (`content.attachment.url`, posting list `binary`).

Which elements name the patient comes from fhir_profiles/CompartmentDefinition/patient.json: for each resource type,
the search parameters that place a resource in a patient's compartment, evaluated with the same FHIRPath
evaluators the search index uses. A type outside that definition holds nobody's data (Organization, Practitioner
...: directory resources), unless one of its reference parameters that may point at a Patient names one
(Device.patient, Contract.subject, MessageHeader.focus ...): then it is that patient's record too. A type inside it
whose patient references cannot all be resolved — a foreign server's URL, an identifier nobody holds, a contained
patient without a known document — is `unknown`: treated as sensitive by the policy, never as nobody's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from app.core.ids import reference_type
from app.search.registry import SearchRegistry, load_compartment

# resolve_identifier(system, value) -> Patient id or None; load(type, id) -> current resource JSON or None;
# binary_links(binary_id) -> resources (type, JSON) whose attachment points at that Binary.
IdentifierResolver = Callable[[str, str], str | None]
Loader = Callable[[str, str], dict[str, Any] | None]
BinaryLinks = Callable[[str], list[tuple[str, dict[str, Any]]]]


@dataclass(frozen=True)
class Owner:
    patients: frozenset[str] = frozenset()
    unknown: bool = False  # a patient reference that could not be resolved: sensitive
    directory: bool = False  # the type has no patient compartment: nobody's record

    @property
    def is_patient_record(self) -> bool:
        return not self.directory

    def __or__(self, other: Owner) -> Owner:
        return Owner(self.patients | other.patients, self.unknown or other.unknown, self.directory and other.directory)


NOBODY = Owner(directory=True)


class OwnerFunction:
    def __init__(self, compartment: dict[str, list[str]], registry: SearchRegistry,
                 bases: Callable[[], Iterable[str]], resolve_identifier: IdentifierResolver,
                 load: Loader, binary_links: BinaryLinks) -> None:
        self.compartment = compartment
        self.registry = registry
        self.bases = bases
        self.resolve_identifier = resolve_identifier
        self.load = load
        self.binary_links = binary_links
        self._outside: dict[str, list[str]] = {}

    def __call__(self, resource_type: str, resource: dict[str, Any] | None) -> Owner:
        if resource is None:
            return Owner(unknown=True) if resource_type in self.compartment or resource_type == "Binary" else NOBODY
        if resource_type == "Binary":
            return self._binary(resource)
        if resource_type == "Bundle":  # a stored Bundle (a document, a message) holds its entries' records
            owner = NOBODY
            for entry in resource.get("entry") or []:
                inner = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(inner, dict) and isinstance(inner.get("resourceType"), str):
                    owner = owner | self(inner["resourceType"], inner)
            return owner
        codes = self.compartment.get(resource_type)
        if not codes:
            # Outside the definition, but a record that names a resident (a pacemaker's Device.patient, a
            # Contract they signed) is theirs; one that names nobody is directory data.
            patients, unknown = self._named(resource_type, resource, self._naming(resource_type))
            return Owner(frozenset(patients), unknown, False) if patients or unknown else NOBODY
        patients, unknown = self._named(resource_type, resource, codes)
        if resource_type == "Patient" and resource.get("id"):
            patients.add(str(resource["id"]))
        return Owner(frozenset(patients), unknown, False)

    def _naming(self, resource_type: str) -> list[str]:
        """The reference parameters of a type outside the compartment definition that may point at a Patient."""
        found = self._outside.get(resource_type)
        if found is None:
            found = self._outside[resource_type] = [
                code for code, p in self.registry.params(resource_type).items()
                if p.type == "reference" and "Patient" in p.target] if resource_type != "Patient" else []
        return found

    def _named(self, resource_type: str, resource: dict[str, Any], codes: Iterable[str]) -> tuple[set[str], bool]:
        """(patients the values of `codes` name, whether one could not be resolved)."""
        patients: set[str] = set()
        unknown = False
        for code in codes:
            param = self.registry.get(resource_type, code)
            if param is None:  # the compartment names an element this server cannot evaluate
                unknown = True
                continue
            for value in param.evaluator()(resource):
                found, lost = self._patient_of(value, resource)
                patients |= found
                unknown = unknown or lost
        return patients, unknown

    # -- one reference ------------------------------------------------------------------------------------

    def _patient_of(self, value: Any, resource: dict[str, Any]) -> tuple[set[str], bool]:
        """(patient ids, unresolved?) for one value of a compartment parameter."""
        if not isinstance(value, dict):
            return set(), False
        text = value.get("reference")
        ident = value.get("identifier")
        if isinstance(text, str) and text:
            if text.startswith("#"):
                return self._contained(text[1:], resource)
            local = self._local(text)
            if local is None:  # another server's URL, a urn: — it may name a patient we cannot see
                rtype = reference_type(text)
                return set(), rtype in (None, "Patient")
            rtype, rid = local
            return ({rid}, False) if rtype == "Patient" else (set(), False)
        if isinstance(ident, dict):
            if value.get("type") not in (None, "Patient"):
                return set(), False
            pid = self._by_identifier(ident)
            return ({pid}, False) if pid else (set(), True)
        return set(), False

    def _local(self, text: str) -> tuple[str, str] | None:
        ref = text.split("?")[0]
        if "://" in ref:
            for base in self.bases():
                prefix = base.rstrip("/") + "/"
                if base and ref.startswith(prefix):
                    ref = ref[len(prefix):]
                    break
            else:
                return None
        if ref.startswith("urn:"):
            return None
        segs = ref.split("/")
        if len(segs) in (2, 4) and segs[0][:1].isupper() and segs[1]:
            return segs[0], segs[1]
        return None

    def _by_identifier(self, ident: dict[str, Any]) -> str | None:
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and isinstance(value, str) and system and value:
            return self.resolve_identifier(system, value)
        return None

    def _contained(self, local_id: str, resource: dict[str, Any]) -> tuple[set[str], bool]:
        for inner in resource.get("contained") or []:
            if isinstance(inner, dict) and inner.get("id") == local_id:
                if inner.get("resourceType") != "Patient":
                    return set(), False
                for ident in inner.get("identifier") or []:
                    pid = self._by_identifier(ident) if isinstance(ident, dict) else None
                    if pid:
                        return {pid}, False
                return set(), True
        return set(), True  # a dangling local reference

    # -- Binary ---------------------------------------------------------------------------------------------

    def _binary(self, resource: dict[str, Any]) -> Owner:
        ctx = resource.get("securityContext")
        if isinstance(ctx, dict) and (ctx.get("reference") or ctx.get("identifier")):
            found, lost = self._patient_of(ctx, resource)
            if found or lost:
                return Owner(frozenset(found), lost)
            local = self._local(ctx["reference"]) if isinstance(ctx.get("reference"), str) else None
            if local is None:
                return Owner(unknown=True)
            target = self.load(*local) if local[0] != "Binary" else None
            if target is None:
                return Owner(unknown=True)
            return self(local[0], target)
        links = self.binary_links(str(resource.get("id") or "")) if resource.get("id") else []
        if not links:
            return Owner(unknown=True)  # nothing says whose it is
        owner = Owner()
        for rtype, other in links:
            owner = owner | self(rtype, other)
        return Owner(owner.patients, owner.unknown, False)


def owner_function(svc: Any) -> OwnerFunction:
    """The owner function of a Services instance (built once; the MPI publishes the identifier resolver)."""
    found: OwnerFunction | None = svc.extensions.get("owner")
    if found is not None:
        return found
    from app.store.keys import reference_key

    repo = svc.repo

    def bases() -> list[str]:
        out = [svc.settings.base_url or ""]
        try:
            from flask import has_request_context, request

            if has_request_context():
                out.append(request.host_url.rstrip("/") + "/fhir")
        except ImportError:  # pragma: no cover - Flask is installed wherever the policy runs
            pass
        return [b for b in out if b]

    def resolve_identifier(system: str, value: str) -> str | None:
        index = svc.extensions.get("mpi")
        doc = index.find(system, value) if index is not None else None
        return str(doc["_id"]) if doc else None

    def load(rtype: str, rid: str) -> dict[str, Any] | None:
        if rtype not in repo.resource_types:
            return None
        doc = repo.get_doc(rtype, rid)
        return doc.get("res") if doc and not doc.get("del") else None

    def binary_links(binary_id: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for rtype in ("DocumentReference",):
            if rtype not in repo.resource_types:
                continue
            for rid in repo.keys.lookup(reference_key(rtype, f"Binary/{binary_id}")):
                res = load(rtype, rid)
                if res is not None:
                    out.append((rtype, res))
        return out

    fn = OwnerFunction(load_compartment(svc.profiles_dir), svc.registry, bases, resolve_identifier, load,
                       binary_links)
    svc.extensions["owner"] = fn
    return fn
