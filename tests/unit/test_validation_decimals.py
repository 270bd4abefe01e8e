"""Decimals keep their text through parse, storage shadow and serialisation (FHIR R4 json.html)."""

from __future__ import annotations

import copy

import bson
import pytest

from app.core.fhirjson import FhirDecimal, JsonError, decimal_shadow, dumps, loads, restore_decimals


def test_parse_and_serialise_keep_the_text() -> None:
    text = b'{"a":1.50,"b":[0.10,2,1e3,-0.0],"c":{"d":3.141592653589793238462643}}'
    doc = loads(text)
    assert dumps(doc) == text
    assert isinstance(doc["a"], FhirDecimal) and doc["a"] == 1.5  # still a number for search and sort
    assert dumps(copy.deepcopy(doc)) == text


def test_not_json_numbers_are_refused() -> None:
    for bad in (b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1.}', b"\xff"):
        with pytest.raises(JsonError):
            loads(bad)


def test_huge_integers_become_decimals_a_database_can_store() -> None:
    doc = loads(b'{"v":123456789012345678901234567890}')
    assert isinstance(doc["v"], FhirDecimal)
    assert dumps(doc) == b'{"v":123456789012345678901234567890}'


def test_the_shadow_survives_a_bson_round_trip() -> None:
    res = loads(b'{"valueQuantity":{"value":1.50},"component":[{"v":2.5},{"v":0.000100}]}')
    shadow = decimal_shadow(res)
    assert shadow == [{"p": "/valueQuantity/value", "t": "1.50"}, {"p": "/component/1/v", "t": "0.000100"}]
    stored = bson.decode(bson.encode({"res": res, "dec": shadow}))
    assert dumps(stored["res"]) != dumps(res)  # the database alone loses the text
    restore_decimals(stored["res"], stored["dec"])
    assert dumps(stored["res"]) == dumps(res)


def test_restore_skips_paths_that_no_longer_fit() -> None:
    res = {"a": "text", "b": [1.5]}
    restore_decimals(res, [{"p": "/a", "t": "1.50"}, {"p": "/b/3", "t": "2.0"}, {"p": "/zz/y", "t": "1"},
                           {"p": "/b/x", "t": "1"}, {"p": "", "t": "1"}])
    assert res == {"a": "text", "b": [1.5]}
