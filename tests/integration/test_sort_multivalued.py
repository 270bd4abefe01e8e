"""`_sort` on a parameter with several values (search.html#sort; as HAPI and MongoDB order arrays): ascending by
each resource's smallest value, descending by its largest, among resources with one value and with none (which
sort first ascending and last descending), on every page of `_count=1` forward through `next` and back through
`previous`. The sort key used to keep one value (a string's first, a date's earliest), so `_sort=-given` and
`_sort=-target-date` ordered by that value too."""

from __future__ import annotations

import pytest

from app.store.reindex import reindex
from tests.integration.test_search import ids, search
from tests.integration.test_search_semantics import put

TAG = "urn:ehc:test:sort-multi|"

# id -> given names (family Sortmulti): smallest / largest
GIVEN = {
    "smv-a": ["Mia", "Anna"],  # anna / mia
    "smv-b": ["Ben"],  # ben
    "smv-c": ["Cleo", "Zoe"],  # cleo / zoe
    "smv-d": ["Nora"],  # nora
    "smv-e": [],  # none
    "smv-f": ["Yara", "Ben"],  # ben / yara: ties smv-b ascending (then by id)
}
GIVEN_UP = ["smv-e", "smv-a", "smv-b", "smv-f", "smv-c", "smv-d"]
GIVEN_DOWN = ["smv-c", "smv-f", "smv-d", "smv-a", "smv-b", "smv-e"]

# id -> Goal.target.dueDate values: earliest / latest
DUE = {
    "smv-ga": ["2024-05-01", "2021-01-01"],  # 2021 / 2024
    "smv-gb": ["2022-06-01"],
    "smv-gc": ["2020-03-01", "2025-09-01", "2022-06-01"],  # 2020 / 2025
    "smv-gd": [],  # none
    "smv-ge": ["2023-01-01"],
}
DUE_UP = ["smv-gd", "smv-gc", "smv-ga", "smv-gb", "smv-ge"]
DUE_DOWN = ["smv-gc", "smv-ga", "smv-ge", "smv-gb", "smv-gd"]


def _link(bundle, relation):
    url = next((link["url"] for link in bundle["link"] if link["relation"] == relation), None)
    return url.split("/fhir/", 1)[1] if url else None


def walk(client, query):
    """Every page of `query` following `next`, then from the last page back following `previous`: the matches
    in the order of each walk (the backward one turned forward again)."""
    bundle = search(client, query)
    forward = ids(bundle)
    for _ in range(20):
        nxt = _link(bundle, "next")
        if nxt is None:
            break
        bundle = search(client, nxt)
        forward += ids(bundle)
    else:
        raise AssertionError(f"more than 20 pages for {query}")
    backward = ids(bundle)
    for _ in range(20):
        prev = _link(bundle, "previous")
        if prev is None:
            break
        bundle = search(client, prev)
        backward = ids(bundle) + backward
    else:
        raise AssertionError(f"more than 20 pages back for {query}")
    return forward, backward


@pytest.fixture(scope="module")
def data(app):
    client = app.test_client()
    put(client, "Patient/smv-p", {"resourceType": "Patient", "id": "smv-p", "name": [{"family": "Sortsubject"}]})
    system, code = TAG.split("|")[0], "x"
    for rid, given in GIVEN.items():
        name = {"family": "Sortmulti", **({"given": given} if given else {})}
        put(client, f"Patient/{rid}", {"resourceType": "Patient", "id": rid, "name": [name]})
    for rid, due in DUE.items():
        put(client, f"Goal/{rid}", {
            "resourceType": "Goal", "id": rid, "lifecycleStatus": "active", "description": {"text": rid},
            "meta": {"tag": [{"system": system, "code": code}]}, "subject": {"reference": "Patient/smv-p"},
            **({"target": [{"dueDate": d} for d in due]} if due else {})})
    return client


@pytest.mark.parametrize("count", [1, 2, 10])
def test_given_sorts_by_the_smallest_ascending_and_the_largest_descending(client, data, count):
    for sort, expected in (("given", GIVEN_UP), ("-given", GIVEN_DOWN)):
        forward, backward = walk(client, f"Patient?family=Sortmulti&_sort={sort}&_count={count}")
        assert forward == expected, (sort, count)
        assert backward == expected, (sort, count)


@pytest.mark.parametrize("where", [f"_tag={TAG}x", "subject=Patient/smv-p"])  # the database path, the keyed one
@pytest.mark.parametrize("count", [1, 2])
def test_dates_sort_by_the_earliest_ascending_and_the_latest_descending(client, data, where, count):
    for sort, expected in (("target-date", DUE_UP), ("-target-date", DUE_DOWN)):
        forward, backward = walk(client, f"Goal?{where}&_sort={sort}&_count={count}")
        assert forward == expected, (sort, where, count)
        assert backward == expected, (sort, where, count)


def test_a_second_key_after_a_key_with_several_values(client, data):
    """The cursor's tie on the first key compares the end that key sorts by (smv-b and smv-f share their
    smallest given name, not their largest)."""
    for sort, expected in (("given,-_id", ["smv-e", "smv-a", "smv-f", "smv-b", "smv-c", "smv-d"]),
                           ("-given,-_id", GIVEN_DOWN)):
        forward, backward = walk(client, f"Patient?family=Sortmulti&_sort={sort}&_count=1")
        assert forward == expected and backward == expected, sort


def test_a_key_stored_before_sorts_by_its_one_value_until_reindexed(client, data, services):
    """A document written before keeps the scalar key of its first given name: it sorts by that value both ways,
    among the new ones; `ehc reindex` rewrites it as [smallest, largest]."""
    put(client, "Patient/smv-old", {"resourceType": "Patient", "id": "smv-old",
                                    "name": [{"family": "Sortold", "given": ["Kai", "Abe", "Zed"]}]})
    put(client, "Patient/smv-new", {"resourceType": "Patient", "id": "smv-new",
                                    "name": [{"family": "Sortold", "given": ["Hal", "Lia"]}]})
    put(client, "Patient/smv-one", {"resourceType": "Patient", "id": "smv-one",
                                    "name": [{"family": "Sortold", "given": ["Jon"]}]})
    col = services.repo.current("Patient")
    col.update_one({"_id": "smv-old"}, {"$set": {"so.given": "kai"}})  # as the release before stored it
    assert walk(client, "Patient?family=Sortold&_sort=given&_count=1")[0] == ["smv-new", "smv-one", "smv-old"]
    assert walk(client, "Patient?family=Sortold&_sort=-given&_count=1")[0] == ["smv-new", "smv-old", "smv-one"]
    assert reindex(services.repo).rebuilt.get("Patient", 0) >= 1
    assert col.find_one({"_id": "smv-old"})["so"]["given"] == ["abe", "zed"]
    assert walk(client, "Patient?family=Sortold&_sort=given&_count=1")[0] == ["smv-old", "smv-new", "smv-one"]
    assert walk(client, "Patient?family=Sortold&_sort=-given&_count=1")[0] == ["smv-old", "smv-new", "smv-one"]
