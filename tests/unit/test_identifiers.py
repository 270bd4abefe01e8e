"""Identifier systems of the master patient index: NamingSystem data, document checks, Patient checks."""

from __future__ import annotations

import json
import random
import shutil
from datetime import date
from pathlib import Path

import pytest

from app.mpi.documents import mod11_2
from app.mpi.identifiers import (
    PROFILES_DIR,
    RULE_EXTENSION,
    IdentifierInvalid,
    IdentifierRegistry,
    check_patient_identifiers,
    normalize_patient_identifiers,
)

ID_CARD = "urn:oid:2.16.156.10011.1.3"
EHC = "urn:oid:2.16.156.10011.1.19"
FPR = "urn:ehc:id:foreigner-permanent-residence"
PASSPORT = "urn:ehc:id:passport"
HK_MACAU = "urn:ehc:id:hk-macau-permit"
TAIWAN = "urn:ehc:id:taiwan-permit"
OFFICER = "urn:ehc:id:officer"
SOCIAL_SECURITY = "urn:ehc:id:social-security-card"
HEX = "ABD17E7ED399EF68AB5660155D6E226D2C92EAC3254A4A66BED83AED0ADA1E9E"


@pytest.fixture(scope="module")
def registry() -> IdentifierRegistry:
    return IdentifierRegistry.from_profiles(PROFILES_DIR)


# ---------------------------------------------------------------- NamingSystem data

NAMING_SYSTEM_FILES = sorted((PROFILES_DIR / "NamingSystem").glob("*.json"))


def _rule(resource: dict) -> dict:
    ext = next(e for e in resource["extension"] if e["url"] == RULE_EXTENSION)
    return {s["url"]: next(v for k, v in s.items() if k.startswith("value")) for s in ext["extension"]}


@pytest.mark.parametrize("path", NAMING_SYSTEM_FILES, ids=lambda p: p.stem)
def test_naming_system_json_is_complete(path: Path) -> None:
    resource = json.loads(path.read_text(encoding="utf-8"))
    assert resource["resourceType"] == "NamingSystem"
    assert resource["kind"] == "identifier" and resource["status"] == "active" and resource["name"]
    uri = [u for u in resource["uniqueId"] if u["type"] == "uri"]
    assert len(uri) == 1 and uri[0]["preferred"] is True
    if uri[0]["value"].startswith("urn:oid:"):
        oid = [u["value"] for u in resource["uniqueId"] if u["type"] == "oid"]
        assert oid == [uri[0]["value"].removeprefix("urn:oid:")]
    rule = _rule(resource)
    assert rule["validator"] and rule["nameZh"] and rule["nameEn"]
    assert {"master", "serverIssued", "prefix"} <= rule.keys()
    assert "\n\n" in resource["description"]  # Chinese paragraph, then English


@pytest.mark.parametrize("path", NAMING_SYSTEM_FILES, ids=lambda p: p.stem)
def test_naming_system_is_valid_fhir(path: Path) -> None:
    from fhir.resources.R4B.namingsystem import NamingSystem

    data = json.loads(path.read_text(encoding="utf-8"))
    model = NamingSystem.model_validate(data)  # raises on anything R4 does not allow
    assert model.name == data["name"] and model.uniqueId


def test_every_reference_system_is_defined(registry: IdentifierRegistry) -> None:
    systems = {d.system for d in registry.documents}
    assert {
        ID_CARD, EHC, FPR, PASSPORT, HK_MACAU, TAIWAN, OFFICER, SOCIAL_SECURITY,
        "urn:ehc:id:household-register", "urn:ehc:id:driving-licence", "urn:oid:2.16.156.10011.1.2",
        "urn:oid:2.16.156.10011.1.15", "urn:ehc:id:citizen-card", "urn:ehc:id:payment-code", "urn:ehc:mrn:",
    } <= systems
    codes = {d.code: d.system for d in registry.documents if d.code}
    assert codes == {
        "01": ID_CARD, "02": "urn:ehc:id:household-register", "03": PASSPORT, "04": OFFICER,
        "05": "urn:ehc:id:driving-licence", "06": HK_MACAU, "07": TAIWAN, "99": FPR,
    }


def test_master_systems_and_flags(registry: IdentifierRegistry) -> None:
    assert registry.master_systems() == [
        ID_CARD, "urn:ehc:id:household-register", PASSPORT, OFFICER, HK_MACAU, TAIWAN, FPR,
    ]
    ehc = registry.document_for(EHC)
    assert ehc is not None and ehc.server_issued and not ehc.master and ehc.validator == "hex64"
    for system in ("urn:oid:2.16.156.10011.1.15", "urn:ehc:mrn:org-1", "urn:oid:2.16.156.10011.1.2"):
        doc = registry.document_for(system)
        assert doc is not None and not doc.master and not doc.server_issued


def test_provinces_json() -> None:
    data = json.loads((PROFILES_DIR / "provinces.json").read_text(encoding="utf-8"))
    provinces = data["provinces"]
    assert provinces["11"] == "北京" and provinces["65"] == "新疆" and provinces["82"] == "澳门"
    assert "83" in provinces and "00" in provinces
    assert len(provinces) == 34 + 2


def test_regex_is_data(tmp_path: Path) -> None:
    shutil.copytree(PROFILES_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "NamingSystem" / "passport.json"
    resource = json.loads(path.read_text(encoding="utf-8"))
    for sub in resource["extension"][0]["extension"]:
        if sub["url"] == "regex":
            sub["valueString"] = r"^[A-Z]{1,2}\d{7,8}$"  # e.g. accept foreign passports too
    path.write_text(json.dumps(resource), encoding="utf-8")
    edited = IdentifierRegistry.from_profiles(tmp_path)
    assert edited.validate(PASSPORT, "X12345678").value == "X12345678"
    with pytest.raises(IdentifierInvalid):
        IdentifierRegistry.from_profiles(PROFILES_DIR).validate(PASSPORT, "X12345678")


def test_unknown_validator_name_is_refused_at_load(tmp_path: Path) -> None:
    shutil.copytree(PROFILES_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "NamingSystem" / "passport.json"
    resource = json.loads(path.read_text(encoding="utf-8"))
    for sub in resource["extension"][0]["extension"]:
        if sub["url"] == "validator":
            sub["valueString"] = "luhn"
    path.write_text(json.dumps(resource), encoding="utf-8")
    with pytest.raises(ValueError, match="luhn"):
        IdentifierRegistry.from_profiles(tmp_path)


# ---------------------------------------------------------------- 居民身份证 GB 11643

@pytest.mark.parametrize("value", [
    "110101200001010010", "440305199001010026", "510107198512310034", "11010020171225006X",
    "810000199001010019", "820000200001010024", "830000198001010034",
])
def test_resident_id_valid(registry: IdentifierRegistry, value: str) -> None:
    norm = registry.validate(ID_CARD, value)
    assert norm.value == value and norm.doc_code == "01" and norm.system == ID_CARD
    assert norm.province == value[:2]
    assert norm.birth_date == date(int(value[6:10]), int(value[10:12]), int(value[12:14]))


@pytest.mark.parametrize(("value", "reason"), [
    ("110101200001010011", "check character should be '0', got '1'"),
    ("11010120000230001X", "2000-02-30 does not exist"),
    ("990101200001010014", "no province '99'"),
    ("11010121000101001X", "in the future"),
    ("810100199001010014", "must be exactly 810000"),
    ("830000198013010031", "1980-13-01 does not exist"),
    ("000101200001010010", "no province '00'"),
    ("11010120000101001", "18 characters"),
    ("1101012000010100A0", "17 digits"),
])
def test_resident_id_invalid(registry: IdentifierRegistry, value: str, reason: str) -> None:
    with pytest.raises(IdentifierInvalid) as exc:
        registry.validate(ID_CARD, value)
    assert reason in exc.value.reason
    assert exc.value.field == "value"


def test_a_number_born_today_in_china_is_not_in_the_future_on_a_utc_server(registry: IdentifierRegistry,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """At 01:00 in China on 16 June it is still the 15th in UTC, the clock of most servers: a newborn's number
    (born on the 16th) was refused as born in the future until 08:00. Today is now reckoned in China."""
    from datetime import UTC, datetime

    from app.core import timeutil
    from app.mpi import identifiers

    frozen = datetime(2026, 6, 15, 17, 0, tzinfo=UTC)  # 01:00 on 16 June in China

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return frozen.astimezone(tz) if tz else frozen.replace(tzinfo=None)

    class UtcServerDay(date):
        @classmethod
        def today(cls) -> date:  # what date.today() gives on a server whose clock runs in UTC
            return date(2026, 6, 15)

    monkeypatch.setattr(timeutil, "datetime", Clock)
    monkeypatch.setattr(identifiers, "date", UtcServerDay)
    monkeypatch.setattr(identifiers, "_today_cache", (0.0, date.min))
    first17 = "11010120260616001"
    newborn = registry.validate(ID_CARD, first17 + mod11_2(first17))
    assert newborn.birth_date == date(2026, 6, 16)
    first17 = "11010120260617001"
    with pytest.raises(IdentifierInvalid, match="in the future"):
        registry.validate(ID_CARD, first17 + mod11_2(first17))


def test_resident_id_sex_from_sequence_parity(registry: IdentifierRegistry) -> None:
    assert registry.validate(ID_CARD, "110101200001010010").sex == "male"  # sequence 001
    assert registry.validate(ID_CARD, "440305199001010026").sex == "female"  # sequence 002
    assert registry.validate(ID_CARD, "11010020171225006X").sex == "female"  # sequence 006


def test_lower_case_x_is_normalised(registry: IdentifierRegistry) -> None:
    assert registry.validate(ID_CARD, " 11010020171225006x ").value == "11010020171225006X"


def test_legacy_15_digits_only_in_bulk_import(registry: IdentifierRegistry) -> None:
    with pytest.raises(IdentifierInvalid, match="bulk import"):
        registry.validate(ID_CARD, "110101900101001")
    norm = registry.validate(ID_CARD, "110101900101001", allow_legacy=True)
    assert norm.value == "110101199001010015"
    assert norm.value[17] == mod11_2(norm.value[:17])
    assert norm.birth_date == date(1990, 1, 1) and norm.sex == "male"
    with pytest.raises(IdentifierInvalid, match="does not exist"):
        registry.validate(ID_CARD, "110101900230001", allow_legacy=True)
    with pytest.raises(IdentifierInvalid, match="province"):
        registry.validate(ID_CARD, "990101900101001", allow_legacy=True)


def test_mod11_2_check_characters() -> None:
    assert mod11_2("11010020171225006") == "X"
    assert mod11_2("44030519900101002") == "6"
    # ISO 7064 MOD 11-2 from its definition: weights 2^(17-i) mod 11; check = (12 - sum mod 11) mod 11.
    rng = random.Random(2260)
    seen = set()
    for _ in range(2000):
        body = "".join(rng.choice("0123456789") for _ in range(17))
        check = (12 - sum(int(c) * pow(2, 17 - i, 11) for i, c in enumerate(body)) % 11) % 11
        assert mod11_2(body) == ("X" if check == 10 else str(check))
        seen.add(mod11_2(body))
    assert len(seen) == 11


# ---------------------------------------------------------------- 外国人永久居留身份证

def test_foreigner_card_2023(registry: IdentifierRegistry) -> None:
    norm = registry.validate(FPR, "911840199001010018")
    assert (norm.birth_date, norm.sex, norm.province) == (date(1990, 1, 1), "male", "11")
    assert registry.validate(FPR, "931392200001010024").sex == "female"
    with pytest.raises(IdentifierInvalid, match="check character should be '8'"):
        registry.validate(FPR, "911840199001010010")
    with pytest.raises(IdentifierInvalid):
        registry.validate(FPR, "811840199001010014")


def test_foreigner_card_old(registry: IdentifierRegistry) -> None:
    assert registry.validate(FPR, "USA110190010111").value == "USA110190010111"
    with pytest.raises(IdentifierInvalid, match="check digit should be '1', got '2'"):
        registry.validate(FPR, "USA110190010112")
    with pytest.raises(IdentifierInvalid):
        registry.validate(FPR, "US111019001011")


def test_social_security_number_is_an_id_number(registry: IdentifierRegistry) -> None:
    assert registry.validate(SOCIAL_SECURITY, "440305199001010026").sex == "female"
    assert registry.validate(SOCIAL_SECURITY, "911840199001010018").sex == "male"
    with pytest.raises(IdentifierInvalid, match="check character"):
        registry.validate(SOCIAL_SECURITY, "110101200001010011")


# ---------------------------------------------------------------- other documents

@pytest.mark.parametrize(("system", "valid", "invalid"), [
    (HK_MACAU, ["H00000001", "M12345678", "H1234567890"], ["h12345678", "A12345678", "H1234567"]),
    (TAIWAN, ["12345678", "1234567890", "1234567890(B)"], ["1234567", "T12345678"]),
    (PASSPORT, ["E00000001", "EA0000001", "G00000001", "D1234567", "SE1234567"],
     ["E1234567", "EI1234567", "X12345678"]),
    (OFFICER, ["南字第0000001号", "南京字第1234号"], ["南字0000001号", "南字第123号"]),
])
def test_regex_documents(
    registry: IdentifierRegistry, system: str, valid: list[str], invalid: list[str]
) -> None:
    for value in valid:
        assert registry.validate(system, value).value == value
    for value in invalid:
        with pytest.raises(IdentifierInvalid, match="格式错误"):
            registry.validate(system, value)


def test_electronic_health_card_id(registry: IdentifierRegistry) -> None:
    assert registry.validate(EHC, HEX).value == HEX
    assert registry.validate(EHC, HEX.lower()).value == HEX
    with pytest.raises(IdentifierInvalid, match="64 hexadecimal"):
        registry.validate(EHC, HEX[:-1])
    with pytest.raises(IdentifierInvalid):
        registry.validate(EHC, HEX[:-1] + "G")


def test_prefix_system_for_hospital_record_numbers(registry: IdentifierRegistry) -> None:
    doc = registry.document_for("urn:ehc:mrn:org-1")
    assert doc is not None and doc.prefix and doc.system == "urn:ehc:mrn:"
    assert registry.document_for("urn:ehc:mrn:") is None
    norm = registry.validate("urn:ehc:mrn:org-1", " MRN0001 ")
    assert (norm.system, norm.value, norm.doc_code) == ("urn:ehc:mrn:org-1", "MRN0001", None)
    with pytest.raises(IdentifierInvalid, match="empty"):
        registry.validate("urn:ehc:mrn:org-1", "   ")
    with pytest.raises(IdentifierInvalid) as exc:
        registry.validate("urn:ehc:mrn:bad org", "1")
    assert exc.value.field == "system"


def test_unknown_systems_and_codes(registry: IdentifierRegistry) -> None:
    assert not registry.is_known_system("http://example.org/ids")
    assert registry.is_known_system(ID_CARD) and registry.is_known_system("urn:ehc:mrn:h1")
    assert registry.validate("http://example.org/ids", " raw ").value == " raw "
    assert registry.system_for_code("01") == ID_CARD
    assert registry.system_for_code("99") == FPR
    with pytest.raises(IdentifierInvalid, match="08"):
        registry.system_for_code("08")


# ---------------------------------------------------------------- Patient checks

def _patient(*identifiers: tuple[str, str], **fields: object) -> dict:
    idents = [{"system": s, "value": v} for s, v in identifiers]
    return {"resourceType": "Patient", "identifier": idents, **fields}


def test_patient_with_agreeing_id_number_has_no_issues(registry: IdentifierRegistry) -> None:
    patient = _patient((ID_CARD, "440305199001010026"), ("urn:ehc:mrn:h1", "A1"),
                       gender="female", birthDate="1990-01-01")
    assert check_patient_identifiers(patient, registry) == []
    assert check_patient_identifiers({**patient, "birthDate": "1990-01"}, registry) == []
    assert check_patient_identifiers({**patient, "birthDate": "1990"}, registry) == []


def test_patient_invalid_id_number(registry: IdentifierRegistry) -> None:
    issues = check_patient_identifiers(_patient(("http://x", "y"), (ID_CARD, "110101200001010011")), registry)
    assert len(issues) == 1
    assert issues[0].code == "value" and issues[0].expression == ["Patient.identifier[1].value"]
    assert "居民身份证" in issues[0].diagnostics and "check character" in issues[0].diagnostics


def test_patient_identifier_without_value(registry: IdentifierRegistry) -> None:
    patient = {"resourceType": "Patient", "identifier": [{"system": PASSPORT}]}
    [issue] = check_patient_identifiers(patient, registry)
    assert issue.expression == ["Patient.identifier[0].value"] and "no value" in issue.diagnostics


def test_patient_gender_and_birth_date_must_agree(registry: IdentifierRegistry) -> None:
    patient = _patient((ID_CARD, "440305199001010026"), gender="male", birthDate="1990-01-02")
    issues = check_patient_identifiers(patient, registry)
    assert sorted(i.expression[0] for i in issues) == ["Patient.birthDate", "Patient.gender"]
    assert all(i.code == "business-rule" for i in issues)
    [issue] = check_patient_identifiers({**patient, "gender": "unknown", "birthDate": "1991"}, registry)
    assert issue.expression == ["Patient.birthDate"]


def test_patient_normalised_copy(registry: IdentifierRegistry) -> None:
    patient = _patient((ID_CARD, "11010020171225006x"), ("http://x", " keep "))
    out, issues = normalize_patient_identifiers(patient, registry)
    assert issues == []
    assert out["identifier"][0]["value"] == "11010020171225006X"
    assert out["identifier"][1]["value"] == " keep "  # unknown systems pass unchanged
    assert patient["identifier"][0]["value"] == "11010020171225006x"  # the input is not modified


def test_patient_legacy_number_in_bulk_import(registry: IdentifierRegistry) -> None:
    patient = _patient((ID_CARD, "110101900101001"), gender="male", birthDate="1990-01-01")
    assert check_patient_identifiers(patient, registry)[0].expression == ["Patient.identifier[0].value"]
    out, issues = normalize_patient_identifiers(patient, registry, allow_legacy=True)
    assert issues == [] and out["identifier"][0]["value"] == "110101199001010015"


def test_server_issued_card_id_is_refused_from_clients(registry: IdentifierRegistry) -> None:
    patient = _patient((EHC, HEX))
    [issue] = check_patient_identifiers(patient, registry)
    assert issue.expression == ["Patient.identifier[0]"] and "server" in issue.diagnostics
    assert check_patient_identifiers(patient, registry, existing=patient) == []  # sent back unchanged
    assert check_patient_identifiers(patient, registry, trusted=True) == []
    other = _patient((EHC, "0" * 64))
    assert len(check_patient_identifiers(other, registry, existing=patient)) == 1
