"""`GET metadata?mode=` (http.html#capabilities). R4 defines `full` (the default), `normative` and `terminology`, and
lets a server ignore the parameter; this server also answers `terse` (its own: the statement without prose) and
refuses a mode it does not know (400 naming `mode`). Before, every mode, known or not, answered the full statement."""

from __future__ import annotations

import json
from typing import Any

import pytest


def statement(client: Any, query: str = "") -> dict[str, Any]:
    r = client.get("/fhir/metadata" + query)
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    body = dict(r.json)
    assert body["resourceType"] == "CapabilityStatement"
    body.pop("date")  # the time it was generated
    return body


def keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in keys(v)}
    return set()


def declared(cap: dict[str, Any]) -> list[Any]:
    """What the statement says is supported: per resource type its interactions, search parameters (name, type,
    definition), includes and operations; the system interactions and operations."""
    rest = cap["rest"][0]
    return [[(r["type"], [i["code"] for i in r["interaction"]],
              [(p["name"], p["type"], p.get("definition")) for p in r.get("searchParam", [])],
              r.get("searchInclude"), r.get("searchRevInclude"), [o["name"] for o in r.get("operation", [])])
             for r in rest["resource"]],
            [i["code"] for i in rest["interaction"]], [p["name"] for p in rest["searchParam"]],
            [o["name"] for o in rest.get("operation", [])], rest.get("security"), cap["format"], cap["patchFormat"]]


@pytest.mark.parametrize("mode", ["full", "normative", "terminology"])
def test_the_r4_modes_answer_the_whole_statement(client: Any, mode: str) -> None:
    """`normative`: CapabilityStatement is normative in R4, all of it; `terminology`: no TerminologyCapabilities
    here (no terminology service), so the CapabilityStatement, as R4 allows."""
    assert statement(client, f"?mode={mode}") == statement(client)


def test_terse_leaves_the_prose_out_and_declares_the_same(client: Any) -> None:
    full = statement(client)
    short = statement(client, "?mode=terse")
    assert "documentation" in keys(full)  # the full one has prose (_has, _compartment ...)
    assert "documentation" not in keys(short)
    assert not {"text", "description", "purpose", "copyright"} & set(short)
    assert short["implementation"] == full["implementation"]  # implementation.description is required (1..1)
    assert declared(short) == declared(full)
    assert len(json.dumps(short)) < len(json.dumps(full))
    summary = client.get("/fhir/metadata?mode=terse&_summary=true").json  # _summary and _elements still apply
    assert summary["meta"]["tag"][0]["code"] == "SUBSETTED" and "searchParam" not in summary["rest"][0]["resource"][0]


@pytest.mark.parametrize("query", ["?mode=bogus", "?mode=", "?mode=TERSE", "?mode=terse&mode=full"])
def test_an_unknown_mode_is_refused_naming_mode(client: Any, query: str) -> None:
    r = client.get("/fhir/metadata" + query)
    assert r.status_code == 400, query
    assert r.json["resourceType"] == "OperationOutcome" and r.json["issue"][0]["expression"] == ["mode"]
