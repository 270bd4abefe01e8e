"""Identifier systems of the master patient index and their validation.

The systems and their rules are data: one FHIR R4 NamingSystem per document in fhir_profiles/NamingSystem/,
each carrying the extension https://ehc.example.cn/fhir/StructureDefinition/identifier-rule (document code of
CV02.01.101, validator name, regex, master / server-issued / prefix / lifelong flags), and the GB/T 2260
province codes in fhir_profiles/provinces.json. IdentifierRegistry loads them once; validation afterwards is
pure and does no I/O. The check arithmetic lives in app.mpi.documents.

check_patient_identifiers / normalize_patient_identifiers apply the rules to a Patient resource: every
identifier of a known system must be valid, an ID number's embedded birth date and sex must agree with
Patient.birthDate and Patient.gender, and a server-issued number (the electronic health card ID) cannot be
submitted by a client. Identifiers of unknown systems pass unchanged.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

from app.core.errors import Issue
from app.core.timeutil import today_in_china
from app.mpi.documents import CompiledRule, IdentifierInvalid, ProvinceTable
from app.profiles import PROFILES_DIR  # fhir_profiles/ in a source tree, app/_profiles when installed

__all__ = [
    "RULE_EXTENSION",
    "DocumentType",
    "IdentifierInvalid",
    "IdentifierRegistry",
    "NormalizedIdentifier",
    "check_patient_identifiers",
    "default_registry",
    "normalize_patient_identifiers",
]

RULE_EXTENSION = "https://ehc.example.cn/fhir/StructureDefinition/identifier-rule"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # the organization id after a prefix system


@dataclass(frozen=True)
class DocumentType:
    """One identifier system as its NamingSystem describes it."""

    system: str  # the full system, or the prefix when prefix is True (urn:ehc:mrn:)
    code: str | None  # 身份证件类别 CV02.01.101, e.g. "01"
    name_zh: str
    name_en: str
    validator: str  # "gb11643", "fpr-2023|fpr-old", "regex", "hex64", "nonempty"
    regex: str | None
    master: bool  # may key the master index (主索引)
    server_issued: bool  # only this server assigns values (电子健康卡ID)
    prefix: bool  # system is a prefix completed by an organization id
    lifelong: bool = False  # a person keeps one number for life: a different number means a different person

    @property
    def label(self) -> str:
        return f"{self.name_zh} {self.name_en}"


@dataclass(frozen=True)
class NormalizedIdentifier:
    system: str
    value: str  # normalised: upper-case X, legacy 15 digits made 18
    doc_code: str | None
    birth_date: date | None = None
    sex: str | None = None  # 'male' | 'female'
    province: str | None = None


def _rule_fields(resource: dict[str, Any], source: str) -> dict[str, Any]:
    for ext in resource.get("extension", []):
        if ext.get("url") == RULE_EXTENSION:
            out: dict[str, Any] = {}
            for sub in ext.get("extension", []):
                value = [v for k, v in sub.items() if k.startswith("value")]
                if value:
                    out[sub["url"]] = value[0]
            return out
    raise ValueError(f"{source}: NamingSystem has no {RULE_EXTENSION} extension")


def document_from_naming_system(resource: dict[str, Any], source: str = "NamingSystem") -> DocumentType:
    """Read one NamingSystem resource into a DocumentType."""
    if resource.get("resourceType") != "NamingSystem":
        raise ValueError(f"{source}: not a NamingSystem")
    uris = [u for u in resource.get("uniqueId", []) if u.get("type") == "uri"]
    if not uris:
        raise ValueError(f"{source}: NamingSystem has no uniqueId of type uri")
    system = next((u for u in uris if u.get("preferred")), uris[0])["value"]
    rule = _rule_fields(resource, source)
    if "validator" not in rule:
        raise ValueError(f"{source}: identifier-rule has no validator")
    return DocumentType(
        system=system,
        code=rule.get("documentCode"),
        name_zh=rule.get("nameZh", resource.get("name", system)),
        name_en=rule.get("nameEn", resource.get("name", system)),
        validator=rule["validator"],
        regex=rule.get("regex"),
        master=bool(rule.get("master", False)),
        server_issued=bool(rule.get("serverIssued", False)),
        prefix=bool(rule.get("prefix", False)),
        lifelong=bool(rule.get("lifelong", False)),
    )


class IdentifierRegistry:
    """The known identifier systems, their compiled rules, and the province table."""

    def __init__(self, documents: list[DocumentType], provinces: ProvinceTable) -> None:
        self.provinces = provinces
        self._exact: dict[str, DocumentType] = {}
        self._prefixes: list[DocumentType] = []
        self._by_code: dict[str, DocumentType] = {}
        self._rules: dict[str, CompiledRule] = {}
        for doc in documents:
            if doc.system in self._rules:
                raise ValueError(f"identifier system {doc.system} is defined twice")
            if doc.code is not None:
                if doc.code in self._by_code:
                    raise ValueError(f"document code {doc.code} is defined twice")
                self._by_code[doc.code] = doc
            if doc.prefix:
                self._prefixes.append(doc)
            else:
                self._exact[doc.system] = doc
            self._rules[doc.system] = CompiledRule(doc.validator, doc.regex, doc.label)
        self._documents = list(documents)

    @classmethod
    def from_profiles(cls, profiles_dir: Path) -> IdentifierRegistry:
        """Load fhir_profiles/NamingSystem/*.json and fhir_profiles/provinces.json."""
        documents = []
        for path in sorted((profiles_dir / "NamingSystem").glob("*.json")):
            resource = json.loads(path.read_text(encoding="utf-8"))
            documents.append(document_from_naming_system(resource, path.name))
        data = json.loads((profiles_dir / "provinces.json").read_text(encoding="utf-8"))
        provinces = ProvinceTable(
            names=dict(data["provinces"]),
            national_node=data.get("nationalNode", "00"),
            permit_address_codes=dict(data.get("residencePermitAddressCodes", {})),
        )
        return cls(documents, provinces)

    @property
    def documents(self) -> list[DocumentType]:
        return list(self._documents)

    def document_for(self, system: str) -> DocumentType | None:
        doc = self._exact.get(system)
        if doc is not None:
            return doc
        for candidate in self._prefixes:
            if system.startswith(candidate.system) and len(system) > len(candidate.system):
                return candidate
        return None

    def is_known_system(self, system: str) -> bool:
        return self.document_for(system) is not None

    def system_for_code(self, doc_code: str) -> str:
        """The identifier system of a CV02.01.101 document code ("01" -> urn:oid:2.16.156.10011.1.3)."""
        doc = self._by_code.get(doc_code.strip())
        if doc is None:
            raise IdentifierInvalid(f"unknown document type code {doc_code!r}", field="type")
        return doc.system

    def master_systems(self) -> list[str]:
        """Systems that may key the master index, in document-code order (the resident ID card first)."""
        masters = [d for d in self._documents if d.master and not d.prefix]
        return [d.system for d in sorted(masters, key=lambda d: (d.code or "~", d.system))]

    def validate(self, system: str, value: str, *, allow_legacy: bool = False) -> NormalizedIdentifier:
        """Check a value against its system's rule and normalise it; unknown systems pass unchanged.

        allow_legacy accepts 15-digit resident ID numbers (bulk import only) and makes them 18 characters.
        """
        doc = self.document_for(system)
        if doc is None:
            return NormalizedIdentifier(system, value, None)
        if doc.prefix and not _FHIR_ID.fullmatch(system[len(doc.system) :]):
            raise IdentifierInvalid(
                f"the system must be {doc.system}<organization id>, got {system!r}", field="system"
            )
        if not isinstance(value, str):
            raise IdentifierInvalid("the value must be a string")
        parsed = self._rules[doc.system](value.strip(), self.provinces, allow_legacy, _today())
        return NormalizedIdentifier(
            system, parsed.value, doc.code, parsed.birth_date, parsed.sex, parsed.province
        )


_today_cache: tuple[float, date] = (0.0, date.min)


def _today() -> date:
    """Today in China, re-read at most once a minute (it costs more than the rest of an ID check)."""
    global _today_cache
    now = time.time()
    if now >= _today_cache[0]:
        _today_cache = (now + 60.0, today_in_china())
    return _today_cache[1]


@cache
def default_registry() -> IdentifierRegistry:
    """The registry of the repository's fhir_profiles/, loaded once per process."""
    return IdentifierRegistry.from_profiles(PROFILES_DIR)


def age_of(patient: dict[str, Any], registry: IdentifierRegistry, today: date) -> int | None:
    """Whole years since the resident was born: from Patient.birthDate when it gives the day, else from the date
    an identity document embeds (a resident ID number's 8 digits; hospitals often send the number alone). None
    when neither gives the day: callers treat an unknown age as an adult's."""
    born = _day(patient.get("birthDate")) or _embedded_birth_date(patient, registry)
    if born is None:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _day(text: Any) -> date | None:
    try:
        return date.fromisoformat(text) if isinstance(text, str) and len(text) == 10 else None
    except ValueError:
        return None


def _embedded_birth_date(patient: dict[str, Any], registry: IdentifierRegistry) -> date | None:
    for ident in patient.get("identifier") or []:
        if isinstance(ident, dict) and isinstance(ident.get("system"), str) and isinstance(ident.get("value"), str):
            try:
                born = registry.validate(ident["system"], ident["value"]).birth_date
            except IdentifierInvalid:
                continue
            if born is not None:
                return born
    return None


def _birth_date_conflict(birth_date: Any, embedded: date) -> bool:
    """True when Patient.birthDate (YYYY, YYYY-MM or YYYY-MM-DD) disagrees with the embedded date."""
    if not isinstance(birth_date, str) or len(birth_date) < 4:
        return False  # absent or malformed: the structure validator reports the latter
    given = birth_date[:10]
    return not embedded.isoformat().startswith(given)


def normalize_patient_identifiers(
    patient: dict[str, Any],
    registry: IdentifierRegistry,
    *,
    allow_legacy: bool = False,
    existing: dict[str, Any] | None = None,
    trusted: bool = False,
) -> tuple[dict[str, Any], list[Issue]]:
    """Validate a Patient's identifiers; return a copy with normalised values, and the issues found.

    existing: the stored version on update; server-issued values it already holds may be sent back unchanged.
    trusted: the server itself is writing (it may set server-issued values).
    """
    # Copy only what may change (the identifier list): this runs on every write and every imported row.
    out = dict(patient)
    identifiers = out.get("identifier")
    if not isinstance(identifiers, list):
        return out, _demographic_issues(out, [])
    identifiers = out["identifier"] = list(identifiers)
    issued = _server_issued_values(existing or {}, registry)
    issues: list[Issue] = []
    carriers: list[tuple[int, NormalizedIdentifier, DocumentType]] = []
    lifelong: dict[str, tuple[int, str]] = {}  # system -> the first (index, value) of a lifelong document
    for i, ident in enumerate(identifiers):
        if not isinstance(ident, dict) or not isinstance(ident.get("system"), str):
            continue
        system = ident["system"]
        doc = registry.document_for(system)
        if doc is None:
            continue
        value = ident.get("value")
        where = f"Patient.identifier[{i}]"
        if doc.server_issued and not trusted and (system, value) not in issued:
            issues.append(Issue(
                f"{doc.label} ({system}) is issued by the server only; a client cannot submit one",
                "business-rule", expression=[where],
            ))
            continue
        if not isinstance(value, str) or not value.strip():
            issues.append(Issue(f"{doc.label} ({system}): the identifier has no value", "value",
                                expression=[f"{where}.value"]))
            continue
        try:
            norm = registry.validate(system, value, allow_legacy=allow_legacy)
        except IdentifierInvalid as exc:
            issues.append(Issue(f"{doc.label} ({system}): {exc.reason}", "value",
                                expression=[f"{where}.{exc.field}"]))
            continue
        if norm.value != value:
            identifiers[i] = {**ident, "value": norm.value}
        if norm.birth_date is not None or norm.sex is not None:
            carriers.append((i, norm, doc))
        # $merge's rule too (app.mpi.merge.check_mergeable): two numbers of a lifelong identity document are two
        # residents. An old number (a merged record's, a corrected one) may stay.
        if doc.lifelong and doc.master and ident.get("use") != "old":
            first = lifelong.setdefault(system, (i, norm.value))
            if first[1] != norm.value:  # one number for life: two numbers are two people in one record
                issues.append(Issue(
                    f"{doc.label} ({system}): Patient.identifier[{first[0]}] and [{i}] hold two different "
                    "numbers; a person has one for life, so they are two people", "business-rule",
                    expression=[f"{where}.value"]))
    issues.extend(_demographic_issues(out, carriers))
    return out, issues


def check_patient_identifiers(
    patient: dict[str, Any],
    registry: IdentifierRegistry,
    *,
    allow_legacy: bool = False,
    existing: dict[str, Any] | None = None,
    trusted: bool = False,
) -> list[Issue]:
    """The issues of normalize_patient_identifiers, without the normalised copy."""
    return normalize_patient_identifiers(
        patient, registry, allow_legacy=allow_legacy, existing=existing, trusted=trusted
    )[1]


def _server_issued_values(existing: dict[str, Any], registry: IdentifierRegistry) -> set[tuple[str, Any]]:
    out = set()
    for ident in existing.get("identifier") or []:
        if isinstance(ident, dict) and isinstance(ident.get("system"), str):
            doc = registry.document_for(ident["system"])
            if doc is not None and doc.server_issued:
                out.add((ident["system"], ident.get("value")))
    return out


def _demographic_issues(
    patient: dict[str, Any], carriers: list[tuple[int, NormalizedIdentifier, DocumentType]]
) -> list[Issue]:
    issues = []
    gender = patient.get("gender")
    birth_date = patient.get("birthDate")
    if isinstance(birth_date, str) and len(birth_date) >= 4:
        today = _today().isoformat()
        given = birth_date[:10]
        if given > today[:len(given)]:  # ISO dates of one precision compare as text
            issues.append(Issue(f"Patient.birthDate '{birth_date}' is after today ({today} in China)",
                                "business-rule", expression=["Patient.birthDate"]))
    for i, norm, doc in carriers:
        if norm.sex is not None and gender in ("male", "female") and gender != norm.sex:
            issues.append(Issue(
                f"Patient.gender '{gender}' contradicts the {doc.label} in Patient.identifier[{i}] "
                f"(sequence digit says {norm.sex})",
                "business-rule", expression=["Patient.gender"],
            ))
        if norm.birth_date is not None and _birth_date_conflict(birth_date, norm.birth_date):
            issues.append(Issue(
                f"Patient.birthDate '{birth_date}' contradicts the {doc.label} in Patient.identifier[{i}] "
                f"(embedded birth date {norm.birth_date.isoformat()})",
                "business-rule", expression=["Patient.birthDate"],
            ))
    return issues
