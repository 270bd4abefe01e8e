"""The in-memory MongoDB matcher and the FerretDB lowering (superset property on random documents)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.search.compilers.date import range_condition
from app.search.matcher import lower_for_database, matches

D = datetime(2024, 1, 1)


def test_equality_on_scalars_and_arrays() -> None:
    doc = {"_id": "a", "ix": {"gender": ["male", "|male"], "n": [1, 2.5]}, "x": 3}
    assert matches({"ix.gender": "male"}, doc)
    assert not matches({"ix.gender": "female"}, doc)
    assert matches({"ix.gender": ["male", "|male"]}, doc)  # the whole array
    assert matches({"x": 3.0}, doc)  # int and float compare
    assert matches({"ix.n": {"$gt": 2}}, doc) and not matches({"ix.n": {"$gt": 3}}, doc)
    assert matches({"_id": {"$in": ["b", "a"]}}, doc)
    assert matches({}, doc)


def test_type_bracketing() -> None:
    doc = {"v": [1, "1", True, D]}
    assert matches({"v": {"$gt": 0}}, doc)
    assert not matches({"v": {"$gt": "2"}}, doc)  # "1" < "2"; the numbers do not take part
    assert matches({"v": {"$lt": "2"}}, doc)
    assert not matches({"v": {"$gt": D}}, doc) and matches({"v": {"$gte": D}}, doc)
    assert not matches({"b": 1}, {"b": True})  # a boolean is not a number
    assert not matches({"s": {"$lt": 5}}, {"s": "3"})
    assert not matches({"d": {"$gt": "2020"}}, {"d": D})
    aware = D.replace(tzinfo=UTC)
    assert matches({"d": {"$gte": aware}}, {"d": D}) and matches({"d": D}, {"d": aware})


def test_missing_fields() -> None:
    doc = {"ix": {"a": ["x"]}}
    assert not matches({"ix.b": "x"}, doc)
    assert matches({"ix.b": {"$ne": "x"}}, doc)
    assert matches({"ix.b": {"$nin": ["x"]}}, doc)
    assert matches({"ix.b": {"$exists": False}}, doc) and not matches({"ix.a": {"$exists": False}}, doc)
    assert matches({"ix.b": None}, doc)
    assert not matches({"ix.b": {"$gt": ""}}, doc)
    assert not matches({"ix.b": {"$regex": ""}}, doc)
    assert matches({"ix.b": {"$not": {"$regex": "x"}}}, doc)


def test_negations_on_arrays() -> None:
    doc = {"t": ["a", "b"]}
    assert not matches({"t": {"$ne": "a"}}, doc)  # $ne: no element equal
    assert not matches({"t": {"$nin": ["b", "z"]}}, doc)
    assert matches({"t": {"$nin": ["z"]}}, doc)
    assert matches({"$nor": [{"t": "z"}]}, doc) and not matches({"$nor": [{"t": "a"}]}, doc)
    assert not matches({"t": {"$not": {"$in": ["a"]}}}, doc)


def test_operators_on_an_array_are_not_correlated_but_elem_match_is() -> None:
    doc = {"q": [{"v": 1, "c": "mg"}, {"v": 10, "c": "g"}], "n": [1, 10]}
    assert matches({"n": {"$gt": 5, "$lt": 5}}, doc)  # some element > 5, some < 5
    assert not matches({"n": {"$elemMatch": {"$gt": 5, "$lt": 9}}}, doc)
    assert matches({"n": {"$elemMatch": {"$gt": 5, "$lt": 11}}}, doc)
    assert matches({"q.v": 10, "q.c": "mg"}, doc)  # dotted paths: any element each
    assert not matches({"q": {"$elemMatch": {"v": 10, "c": "mg"}}}, doc)
    assert matches({"q": {"$elemMatch": {"v": {"$gte": 10}, "c": "g"}}}, doc)
    assert matches({"q": {"$elemMatch": {"$or": [{"c": "kg"}, {"v": 1}]}}}, doc)
    assert not matches({"x": {"$elemMatch": {"v": 1}}}, {"x": {"v": 1}})  # not an array


def test_regex_all_size() -> None:
    doc = {"s": ["zhang wei", "li"], "t": ["a", "b", "c"]}
    assert matches({"s": {"$regex": "^zh"}}, doc) and not matches({"s": {"$regex": "^wei"}}, doc)
    assert matches({"s": {"$regex": "^ZH", "$options": "i"}}, doc)
    assert matches({"t": {"$all": ["a", "c"]}}, doc) and not matches({"t": {"$all": ["a", "z"]}}, doc)
    assert matches({"t": {"$size": 3}}, doc) and not matches({"t": {"$size": 2}}, doc)


def test_logical_operators() -> None:
    doc = {"a": 1, "b": 2}
    assert matches({"$and": [{"a": 1}, {"b": 2}]}, doc)
    assert matches({"$or": [{"a": 9}, {"b": 2}]}, doc)
    assert not matches({"$or": [{"a": 9}, {"b": 9}]}, doc)
    assert not matches({"$nor": [{"a": 9}, {"b": 2}]}, doc)


@pytest.mark.parametrize(
    "flt",
    [
        {"$where": "1"},
        {"a": {"$where": "1"}},
        {"a": {"$expr": 1}},
        {"a": {"$options": "i"}},
        {"a": {"$regex": "x", "$options": "u"}},
        {"$and": []},
        {"$or": "x"},
        {"a": {"$in": "x"}},
        {"a": {"$not": "x"}},
        {"a": {"$gt": [1]}},
        {"a": {"$size": "1"}},
        {"a": {"$elemMatch": {}}},
    ],
)
def test_unsupported_operators_raise(flt: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        matches(flt, {"a": [1]})


def test_lowering_rewrites_only_sub_document_elem_match() -> None:
    exact = {
        "$and": [
            {"ix.d": {"$elemMatch": {"lo": {"$gte": D}, "hi": {"$lte": D}}}},
            {"ix.n": {"$elemMatch": {"$gte": 1, "$lt": 2}}},
            {"ix.q": {"$elemMatch": {"$and": [{"$or": [{"v": 1}, {"v": {"$gt": 3}}]}, {"s": "u"}]}}},
        ]
    }
    assert lower_for_database(exact) == {
        "$and": [
            {"ix.d.lo": {"$gte": D}},
            {"ix.d.hi": {"$lte": D}},
            {"ix.n": {"$elemMatch": {"$gte": 1, "$lt": 2}}},  # on scalars FerretDB has $elemMatch
            {"$or": [{"ix.q.v": 1}, {"ix.q.v": {"$gt": 3}}]},
            {"ix.q.s": "u"},
        ]
    }
    lowered = lower_for_database({"ix.d": {"$elemMatch": {"lo": {"$gte": D}}}, "_id": "x"})
    assert lowered == {"_id": "x", "$and": [{"ix.d.lo": {"$gte": D}}]}
    assert lower_for_database({"a": 1, "b": {"$in": [1]}}) == {"a": 1, "b": {"$in": [1]}}
    # negated sub-document $elemMatch is dropped (a wider answer), negative operators inside one too
    assert lower_for_database({"$nor": [{"q": {"$elemMatch": {"v": 1}}}]}) == {}
    # FerretDB v1.24 does not correlate the bounds of a scalar $elemMatch: under a negation it goes too
    assert lower_for_database({"$nor": [{"n": {"$elemMatch": {"$gte": 1, "$lt": 2}}}], "a": 1}) == {"a": 1}
    assert lower_for_database({"$nor": [{"n": {"$gt": 1}}]}) == {"$nor": [{"n": {"$gt": 1}}]}
    assert lower_for_database({"q": {"$elemMatch": {"v": {"$ne": 1}, "c": "g"}}}) == {"q.c": "g"}
    assert lower_for_database({"$or": [{"q": {"$elemMatch": {"v": {"$ne": 1}}}}, {"a": 1}]}) == {}


# --- property: lowering never loses a match --------------------------------------------------------------
def _random_range(rng: random.Random) -> dict[str, datetime]:
    lo = D + timedelta(days=rng.randint(-40, 40))
    return {"lo": lo, "hi": lo + timedelta(days=rng.choice([1, 1, 7, 31, 400]))}


def _random_doc(rng: random.Random, i: int) -> dict[str, Any]:
    ix: dict[str, Any] = {}
    if rng.random() < 0.85:
        ix["d"] = [_random_range(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.85:
        ix["q"] = [
            {
                "v": float(rng.randint(0, 20)),
                "s": rng.choice(["u", "x", ""]),
                "c": rng.choice(["mg", "g"]),
                "u": rng.choice(["mg", "g", ""]),
            }
            for _ in range(rng.randint(1, 3))
        ]
    if rng.random() < 0.85:
        ix["n"] = [float(rng.randint(0, 20)) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.85:
        ix["t"] = rng.sample(["a", "b", "c", "d"], rng.randint(1, 3))
    return {"_id": f"d{i}", "ix": ix}


def _random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    kind = rng.randint(0, 6 if depth < 2 else 4)
    if kind == 0:
        a = D + timedelta(days=rng.randint(-40, 40))
        return range_condition(
            "ix.d",
            rng.choice(["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]),
            a,
            a + timedelta(days=rng.choice([1, 31])),
            now=D,
        )
    if kind == 1:
        v = float(rng.randint(0, 20))
        cond: dict[str, Any] = {"v": rng.choice([{"$gte": v - 0.5, "$lt": v + 0.5}, {"$gt": v}, {"$lte": v}])}
        if rng.random() < 0.5:
            cond = {"$and": [cond, rng.choice([{"s": "u"}, {"$or": [{"c": "mg"}, {"u": "mg"}]}])]}
        return {"ix.q": {"$elemMatch": cond}}
    if kind == 2:
        v = float(rng.randint(0, 20))
        return {"ix.n": rng.choice([{"$elemMatch": {"$gte": v, "$lt": v + 3}}, {"$gt": v}, {"$lt": v}])}
    if kind == 3:
        vals = rng.sample(["a", "b", "c", "d", "e"], 2)
        return {"ix.t": rng.choice([vals[0], {"$in": vals}, {"$nin": vals}, {"$exists": rng.random() < 0.5}])}
    if kind == 4:
        return {"_id": {"$in": [f"d{rng.randint(0, 50)}" for _ in range(5)]}}
    parts = [_random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    return {rng.choice(["$and", "$or", "$nor"]): parts}


def test_lowered_filter_is_a_superset_on_random_documents() -> None:
    rng = random.Random(20240101)
    docs = [_random_doc(rng, i) for i in range(200)]
    narrowed = 0
    for _ in range(150):
        exact = _random_filter(rng)
        lowered = lower_for_database(exact)
        assert "$elemMatch': {'v'" not in repr(lowered) and "$elemMatch': {'lo'" not in repr(lowered)
        for doc in docs:
            hit = matches(exact, doc)
            assert not hit or matches(lowered, doc), (exact, lowered, doc)
            narrowed += matches(lowered, doc) and not hit
    assert narrowed > 0  # the lowering really is wider sometimes, so the re-check matters
