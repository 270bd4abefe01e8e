"""Patient matching scorer behind Patient/$match: names in characters and pinyin, documents, demographics."""

from __future__ import annotations

import pytest

from app.mpi.identifiers import PROFILES_DIR, IdentifierRegistry
from app.mpi.matching import name_keys, name_similarity, score

ID_CARD = "urn:oid:2.16.156.10011.1.3"
PASSPORT = "urn:ehc:id:passport"
EHC = "urn:oid:2.16.156.10011.1.19"
HEX = "ABD17E7ED399EF68AB5660155D6E226D2C92EAC3254A4A66BED83AED0ADA1E9E"


@pytest.fixture(scope="module")
def registry() -> IdentifierRegistry:
    return IdentifierRegistry.from_profiles(PROFILES_DIR)


def patient(name: dict | None = None, ids: tuple = (), **fields: object) -> dict:
    p: dict = {"resourceType": "Patient", **fields}
    if name is not None:
        p["name"] = [name]
    if ids:
        p["identifier"] = [{"system": s, "value": v} for s, v in ids]
    return p


ZHANG_WEI = patient({"text": "张伟"}, birthDate="1990-01-01", gender="male")


def with_name(name: dict) -> dict:
    return {**ZHANG_WEI, "name": [name]}


# ---------------------------------------------------------------- names

def test_homophone_characters_score_close_below_exact() -> None:
    exact = name_similarity(ZHANG_WEI, with_name({"text": "张伟"}))
    homophone = name_similarity(ZHANG_WEI, with_name({"text": "章伟"}))
    assert exact is not None and homophone is not None
    assert exact[0] == 1.0
    assert 0.8 <= homophone[0] < exact[0]


@pytest.mark.parametrize("name", [
    {"text": "Zhang Wei"}, {"text": "Wei Zhang"}, {"text": "ZHANG Wei"}, {"text": "zhangwei"},
    {"text": "Zhang, Wei"}, {"family": "Zhang", "given": ["Wei"]}, {"family": "张", "given": ["伟"]},
])
def test_latin_and_structured_forms_match_characters(name: dict) -> None:
    sim = name_similarity(ZHANG_WEI, with_name(name))
    assert sim is not None and sim[0] >= 0.95


def test_unrelated_and_fuzzy_names() -> None:
    assert name_similarity(ZHANG_WEI, with_name({"text": "李娜"}))[0] == 0.0  # type: ignore[index]
    fuzzy = name_similarity(ZHANG_WEI, with_name({"text": "Zang Wei"}))  # zh/z, a southern-accent spelling
    assert fuzzy is not None and fuzzy[0] == pytest.approx(0.7)
    initials = name_similarity(ZHANG_WEI, with_name({"text": "赵文"}))  # both z-w
    assert initials is not None and 0 < initials[0] < fuzzy[0]
    assert name_similarity(ZHANG_WEI, patient()) is None


def test_polyphonic_surname_and_u_umlaut() -> None:
    shan = patient({"text": "单田芳"})
    assert {"shantianfang", "dantianfang"} <= set(name_keys(shan))
    assert name_similarity(shan, patient({"text": "Shan Tianfang"}))[0] >= 0.95  # type: ignore[index]
    assert name_similarity(patient({"text": "吕布"}), patient({"text": "Lü Bu"}))[0] >= 0.95  # type: ignore[index]


def test_name_keys() -> None:
    assert name_keys(patient({"text": "张伟"})) == ["zhangwei"]
    assert name_keys(patient({"text": "章伟"})) == ["zhangwei"]
    assert "zhangwei" in name_keys(patient({"text": "Wei Zhang"}))
    assert name_keys(patient({"family": "欧阳", "given": ["修"]})) == ["ouyangxiu"]
    assert name_keys(patient()) == []


# ---------------------------------------------------------------- documents

def test_master_document_agreement_is_certain(registry: IdentifierRegistry) -> None:
    query = patient({"text": "张伟"}, ids=[(ID_CARD, "11010020171225006x")])
    candidate = patient({"text": "张伟"}, ids=[(ID_CARD, "11010020171225006X")], gender="female")
    result = score(query, candidate, registry=registry)
    assert (result.score, result.grade) == (1.0, "certain")
    assert any("居民身份证" in r for r in result.reasons)


def test_legacy_number_and_other_document_types_agree(registry: IdentifierRegistry) -> None:
    legacy = patient(ids=[(ID_CARD, "110101900101001")])
    current = patient(ids=[(ID_CARD, "110101199001010015")])
    assert score(legacy, current, registry=registry).grade == "certain"
    social = patient(ids=[("urn:ehc:id:social-security-card", "110101199001010015")])
    assert score(social, current, registry=registry).grade == "certain"
    card = patient(ids=[(EHC, HEX)])
    assert score(card, patient(ids=[(EHC, HEX.lower())]), registry=registry).grade == "certain"


def test_different_id_number_is_certainly_not(registry: IdentifierRegistry) -> None:
    query = {**ZHANG_WEI, "identifier": [{"system": ID_CARD, "value": "110101199001010015"}]}
    candidate = {**ZHANG_WEI, "identifier": [{"system": ID_CARD, "value": "110105197003120011"}]}
    result = score(query, candidate, registry=registry)
    assert (result.score, result.grade) == (0.0, "certainly-not")


def test_renewable_document_difference_only_lowers_the_score(registry: IdentifierRegistry) -> None:
    phone = [{"system": "phone", "value": "13800138000"}]
    base = {**ZHANG_WEI, "telecom": phone}
    same = score(base, base, registry=registry)
    query = {**base, "identifier": [{"system": PASSPORT, "value": "E00000001"}]}
    candidate = {**base, "identifier": [{"system": PASSPORT, "value": "E00000002"}]}
    renewed = score(query, candidate, registry=registry)
    assert renewed.grade != "certainly-not"
    assert renewed.score < same.score


def test_contradicting_demographics(registry: IdentifierRegistry) -> None:
    def grade(**changes: str) -> str:
        return score(ZHANG_WEI, {**ZHANG_WEI, **changes}, registry=registry).grade

    assert grade(birthDate="1990-01-02") == "certainly-not"
    assert grade(gender="female") == "certainly-not"
    assert grade(birthDate="1990-01") != "certainly-not"
    assert grade(gender="unknown") != "certainly-not"
    # The same ID number with a contradicting gender needs a person to look: neither certain nor excluded.
    ids = [{"system": ID_CARD, "value": "110101199001010015"}]
    mixed = score({**ZHANG_WEI, "identifier": ids}, {**ZHANG_WEI, "identifier": ids, "gender": "female"},
                  registry=registry)
    assert mixed.grade == "possible"


# ---------------------------------------------------------------- weighted score

def test_score_ordering(registry: IdentifierRegistry) -> None:
    names = ["张伟", "Zhang Wei", "章伟", "Zang Wei", "李娜"]
    results = [score(ZHANG_WEI, with_name({"text": n}), registry=registry) for n in names]
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert results[-1].grade == "certainly-not"  # 李娜: only birth date and gender in common
    # No document: never certain.
    assert results[0].grade in ("possible", "probable") and results[0].score < 1.0


def test_phone_and_address_make_probable(registry: IdentifierRegistry) -> None:
    query = {**ZHANG_WEI, "telecom": [{"system": "phone", "value": "13800138000"}],
             "address": [{"city": "北京市", "district": "朝阳区", "line": ["朝阳路1号"]}]}
    candidate = {**ZHANG_WEI, "telecom": [{"system": "phone", "value": "+86 138-0013-8000"}],
                 "address": [{"text": "北京市朝阳区朝阳路1号3单元"}]}
    result = score(query, candidate, registry=registry)
    assert result.grade == "probable" and result.score <= 0.95
    assert "phone agrees (last 8 digits)" in result.reasons
    emails = {**candidate, "telecom": [{"system": "email", "value": "13800138000@example.cn"}]}
    assert score(query, emails, registry=registry).score < result.score


def test_hospital_record_number_agreement_raises_the_score(registry: IdentifierRegistry) -> None:
    mrn = [{"system": "urn:ehc:mrn:h1", "value": "123"}]
    plain = score(ZHANG_WEI, ZHANG_WEI, registry=registry)
    linked = score({**ZHANG_WEI, "identifier": mrn}, {**ZHANG_WEI, "identifier": mrn}, registry=registry)
    assert linked.score > plain.score and linked.grade == "probable"


def test_default_registry_is_used_without_one() -> None:
    ids = [{"system": ID_CARD, "value": "110101199001010015"}]
    assert score({"identifier": ids}, {"identifier": ids}).grade == "certain"
