"""Finding 30: JSON nested 400 levels deep gave a 500 and a 1,700-line traceback. Bodies nested deeper than
MAX_JSON_DEPTH (100) are a 400 OperationOutcome; the check itself never recurses."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from app.core.errors import FhirError
from app.fhir.http import MAX_JSON_DEPTH, check_json_depth, read_json_body


def nested(depth: int) -> str:
    """A Patient whose extensions nest about `depth` levels in total (objects and arrays alternating)."""
    k = max(0, (depth - 3) // 2)
    return ('{"resourceType": "Patient", "extension": [' + '{"url": "x", "extension": [' * k + '{"url": "x"}'
            + "]}" * k + "]}")


def depth_of(text: str) -> int:
    deepest = level = 0
    for ch in text:
        level += ch in "[{"
        level -= ch in "]}"
        deepest = max(deepest, level)
    return deepest


def body(text: str) -> object:
    app = Flask(__name__)
    with app.test_request_context("/fhir/Patient", method="POST", data=text,
                                  content_type="application/fhir+json"):
        from flask import request

        return read_json_body(request, 10 * 1024 * 1024)


def test_limit_is_documented_and_generous():
    assert MAX_JSON_DEPTH == 100
    ok = nested(MAX_JSON_DEPTH)
    assert depth_of(ok) <= MAX_JSON_DEPTH
    assert body(ok)["resourceType"] == "Patient"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 2, 400, 5_000, 200_000])
def test_deeper_bodies_are_400(depth):
    text = nested(depth)
    assert depth_of(text) > MAX_JSON_DEPTH
    with pytest.raises(FhirError) as err:
        body(text)
    assert err.value.status == 400
    outcome = err.value.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "nested more than 100 levels" in outcome["issue"][0]["diagnostics"]


def test_check_is_iterative():
    value: object = []
    for _ in range(50_000):  # far beyond the interpreter's recursion limit
        value = [value]
    with pytest.raises(FhirError):
        check_json_depth(value)
    check_json_depth(json.loads(nested(MAX_JSON_DEPTH)))
