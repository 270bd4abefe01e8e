"""One-time QR tokens under concurrency: the nonce of a dynamic token is durable before $ehc-verify answers
"valid", concurrent verifications share one insert, and a token shown twice at once is accepted once."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from typing import Any

import pytest
from pymongo import MongoClient

from app.ehc.nonces import NonceStore, SharedInserts
from tests.integration.test_ehc_card import params, qrcode, verify
from tests.integration.test_mpi_registration import id_number, patient, post

EXP = int(time.time()) + 300


class GatedCollection:
    """The real collection, whose insert_many waits for `gate` first: the test decides when the first
    batch's insert is answered, so the requests arriving meanwhile are certain to queue behind it."""

    def __init__(self, col: Any) -> None:
        self.col = col
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> Any:
        self.sizes.append(len(docs))
        self.entered.set()
        self.gate.wait(10)
        return self.col.insert_many(docs, ordered=ordered)


def fresh_client_count(db_uri: str, ids: list[str]) -> int:
    """How many of the nonces a separate connection sees (what survives this process)."""
    with MongoClient(db_uri) as other:
        return sum(1 for i in ids if other.get_default_database("ehc")["ehc_nonces"].find_one({"_id": i}))


def run_threads(target: Any, args: list[tuple[Any, ...]]) -> tuple[list[threading.Thread], list[Any]]:
    """Started threads calling target(*a) for each a, and the list their results land in."""
    out: list[Any] = [None] * len(args)

    def run(i: int) -> None:
        out[i] = target(*args[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    return threads, out


@pytest.fixture()
def gated(services: Any) -> tuple[NonceStore, GatedCollection]:
    store = NonceStore(services.repo.db)
    gate = GatedCollection(store.col)
    store.inserts = SharedInserts(gate)  # type: ignore[arg-type]
    return store, gate


def behind_a_blocked_insert(store: NonceStore, gate: GatedCollection, use: Any, queued: list[bytes]
                            ) -> tuple[list[Any], list[Any]]:
    """use(nonce) for a first nonce until its insert is under way (held by the gate), then for each queued
    nonce; none of those is answered before the first insert is; then the gate opens. Returns the results."""
    threads, first = run_threads(use, [(secrets.token_bytes(8),)])
    assert gate.entered.wait(10)
    more, results = run_threads(use, [(n,) for n in queued])
    deadline = time.monotonic() + 10
    while len(store.inserts._queue) < len(queued) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert results == [None] * len(queued), "nothing is answered before its insert is acknowledged"
    gate.gate.set()
    for t in threads + more:
        t.join(10)
        assert not t.is_alive(), "a request still waits for its insert"
    return first, results


def test_requests_arriving_during_an_insert_share_the_next_one(gated: Any, db_uri: str) -> None:
    store, gate = gated
    nonces = [secrets.token_bytes(8) for _ in range(12)]
    first, results = behind_a_blocked_insert(store, gate, lambda n: store.use("K1", n, EXP), nonces)
    assert first == [True] and results == [True] * len(nonces)
    assert gate.sizes == [1, len(nonces)]  # two inserts for thirteen verifications
    assert fresh_client_count(db_uri, [f"K1:{n.hex()}" for n in nonces]) == len(nonces)


def test_one_token_shown_several_times_at_once_is_accepted_once(gated: Any) -> None:
    store, gate = gated
    same = secrets.token_bytes(8)
    _, results = behind_a_blocked_insert(store, gate, lambda n: store.use("K2", n, EXP), [same] * 6)
    assert sorted(results) == [False] * 5 + [True]  # the same nonce six times in one batch
    assert gate.sizes == [1, 6]
    assert store.use("K2", same, EXP) is False  # and later still a replay


def test_many_concurrent_distinct_tokens_are_each_accepted_once(services: Any, db_uri: str) -> None:
    store = NonceStore(services.repo.db)
    nonces = [secrets.token_bytes(8) for _ in range(40)]
    threads, results = run_threads(store.use, [("K3", n, EXP) for n in nonces])
    for t in threads:
        t.join(30)
    assert results == [True] * 40
    again, replays = run_threads(store.use, [("K3", n, EXP) for n in nonces])
    for t in again:
        t.join(30)
    assert replays == [False] * 40
    assert fresh_client_count(db_uri, [f"K3:{n.hex()}" for n in nonces]) == 40


def test_verify_answers_valid_only_after_the_nonce_is_stored(client: Any, db_uri: str) -> None:
    created = post(client, "Patient", patient(id_number("110101", "1991-04-04", 41), name="卫二", born="1991-04-04"))
    assert created.status_code == 201, created.json
    r = qrcode(client, created.json["id"], image={"valueBoolean": False})
    token = params(r.json)["token"]["valueString"]
    kid, payload = token.split(":")[1:3]
    nonce = base64.b32decode(payload + "=" * (-len(payload) % 8))[-8:]
    assert verify(client, token)["valid"]["valueBoolean"] is True
    assert fresh_client_count(db_uri, [f"{kid}:{nonce.hex()}"]) == 1
    assert verify(client, token)["reason"]["valueCode"] == "replayed"


class Interrupted(BaseException):
    """As a worker being stopped in the middle of an insert."""


def test_an_interrupted_insert_fails_its_batch_and_nobody_waits_for_ever(gated: Any) -> None:
    store, gate = gated
    write = gate.insert_many

    def second_interrupted(docs: list[dict[str, Any]], ordered: bool = True) -> Any:
        if len(gate.sizes) >= 1:
            gate.sizes.append(len(docs))
            raise Interrupted()
        return write(docs, ordered=ordered)

    gate.insert_many = second_interrupted  # type: ignore[method-assign]

    def use(nonce: bytes) -> Any:
        try:
            return store.use("K4", nonce, EXP)
        except (Interrupted, RuntimeError) as exc:
            return type(exc).__name__

    first, results = behind_a_blocked_insert(store, gate, use, [secrets.token_bytes(8) for _ in range(2)])
    assert first == [True]
    assert sorted(results) == ["Interrupted", "RuntimeError"]  # the writer stopped, the other refused
    assert gate.sizes == [1, 2]
