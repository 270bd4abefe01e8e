"""SMART scopes: v2 letters, v1 words mapped to v2, granular queries, launch words, narrowing to what a
client was registered with (SMART App Launch 2.0 scopes-and-launch-context)."""

from __future__ import annotations

import pytest

from app.auth.scopes import ResourceScope, ScopeError, describe, intersect, narrow, parse_resource_scope, parse_scopes


def test_v2_letters_and_granular_query():
    s = parse_resource_scope("patient/Observation.rs?category=laboratory")
    assert s == ResourceScope("patient", "Observation", frozenset("rs"), (("category", "laboratory"),))
    assert str(s) == "patient/Observation.rs?category=laboratory"
    assert s.covers("Observation", "r") and s.covers("Observation", "s")
    assert not s.covers("Observation", "c") and not s.covers("Patient", "r")
    assert parse_resource_scope("user/*.cruds").covers("Consent", "d")


@pytest.mark.parametrize("v1,letters", [("read", "rs"), ("write", "cud"), ("*", "cruds")])
def test_v1_words_map_to_v2(v1, letters):
    s = parse_resource_scope(f"system/Patient.{v1}")
    assert s.perms == frozenset(letters)
    assert str(s) == f"system/Patient.{letters}"


@pytest.mark.parametrize("bad", ["patient/Observation.sr", "patient/Observation.rr", "user/Patient.x",
                                 "system/Patient.", "patient/observation.r", "patient/Observation.read?code=1"])
def test_malformed_resource_scopes(bad):
    with pytest.raises(ScopeError):
        parse_resource_scope(bad)


def test_other_scopes_are_words():
    parsed = parse_scopes("launch/patient openid fhirUser offline_access patient/*.rs")
    assert parsed.has("launch/patient") and parsed.has("openid") and parsed.has("offline_access")
    assert [str(r) for r in parsed.resource] == ["patient/*.rs"]
    assert parse_resource_scope("launch/patient") is None
    with pytest.raises(ScopeError):
        parse_scopes("openid made-up", strict=True)


def test_narrow_never_grants_more_than_registered():
    registered = "launch/patient openid fhirUser patient/Observation.rs patient/Patient.r"
    asked = "launch/patient offline_access patient/*.cruds patient/Observation.read user/*.rs openid"
    granted = narrow(asked, registered).split()
    assert granted == ["launch/patient", "patient/Observation.rs", "patient/Patient.r", "patient/Observation.read",
                       "openid"]
    assert "offline_access" not in granted  # not registered
    assert narrow("user/*.cruds", registered) == ""


def test_narrow_keeps_granular_constraints_and_contexts():
    assert narrow("patient/Observation.rs", "patient/Observation.rs?category=laboratory") == \
        "patient/Observation.rs?category=laboratory"
    assert narrow("patient/Observation.rs?category=vital-signs", "patient/Observation.rs?category=laboratory") == ""
    assert narrow("patient/Observation.cruds", "patient/*.r") == "patient/Observation.r"
    assert narrow("system/*.rs patient/*.rs", "system/*.cruds patient/*.cruds", contexts=("system",)) == "system/*.rs"


def test_intersect():
    a = parse_resource_scope("user/*.rs")
    b = parse_resource_scope("user/Patient.cruds")
    assert str(intersect(a, b)) == "user/Patient.rs"
    assert intersect(a, parse_resource_scope("system/Patient.r")) is None


def test_describe_is_bilingual():
    zh, en = describe("patient/Observation.rs?category=laboratory")
    assert "查看" in zh and "检索" in zh and "Observation" in zh
    assert en.startswith("read, search Observation records") and "category=laboratory" in en
    assert describe("offline_access")[1] == "keep access while you are offline"
