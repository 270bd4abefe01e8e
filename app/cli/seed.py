"""`ehc seed --patients N --observations M`: synthetic residents (valid ID numbers, Chinese names) with M lab
Observations each, written in bulk for demos and benchmarks.

The documents are exactly what POST /fhir/Patient and POST /fhir/Observation would store (identifiers
normalised and validated as the master index does, formal card and master index ID, ID and phone numbers
encrypted with their blind indexes, blind-index claims, card status, name postings, the store's posting lists
of the same reference parameters), but written with insert_many in batches instead of one write per
resource; tests/integration/test_seed.py compares them with what the API writes. A resident whose ID number or
record number is already in the index is skipped, so seeding twice adds new residents only.

Memory stays flat however many residents are seeded: each batch is written and dropped, and the name postings
(one list per name key, written once at the end so that no list is updated in place) wait in a temporary
SQLite file. The writes of one batch overlap the building of the next (one writer thread).
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from app.store.database import insert_new

BATCH = 1000
LOINC = ("2339-0", "718-7", "2093-3", "4548-4", "8480-6", "8462-4", "29463-7", "8302-2")


class NameSpill:
    """Name postings (key -> patient ids) of a whole run, kept on disk until they are written once."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="ehc-seed-names-")
        self.db = sqlite3.connect(str(Path(self._dir.name) / "names.sqlite"))
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE p (k TEXT NOT NULL, id TEXT NOT NULL)")

    def add(self, rows: list[tuple[str, str]]) -> None:
        self.db.executemany("INSERT INTO p VALUES (?, ?)", rows)

    def grouped(self) -> Iterator[tuple[str, list[str]]]:
        """(key, ids in the order they were added), by key."""
        key: str | None = None
        ids: list[str] = []
        for k, pid in self.db.execute("SELECT k, id FROM p ORDER BY k, rowid"):
            if k != key:
                if key is not None:
                    yield key, ids
                key, ids = k, []
            ids.append(pid)
        if key is not None:
            yield key, ids

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()


def seed(svc: Any, hooks: Any, cards: Any, patients: int, observations: int, start: int = 0, seed_value: int = 7,
         progress: bool = True, max_seconds: float | None = None,
         should_stop: Callable[[], bool] | None = None) -> dict[str, int]:
    """Seed up to `patients` residents. With max_seconds, stop after the batch during which that time passed,
    and when should_stop() says so; what was seeded is complete (its name postings are still written)."""
    from tqdm import tqdm

    from app.core.ids import new_id
    from app.core.timeutil import utcnow
    from app.ehc.cards import assign_card
    from app.mpi.identifiers import normalize_patient_identifiers
    from app.synthetic import observation, patient

    rng = random.Random(seed_value + start)
    index, repo = hooks.index, svc.repo
    codes = {t: repo.keyed_codes(t) for t in ("Patient", "Observation")}
    written = skipped = obs_written = 0
    names = NameSpill()
    t0 = time.monotonic()
    bar = tqdm(total=patients, unit="resident", disable=not progress, desc="ehc seed", mininterval=0.5)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ehc-seed-writer")
    pending: Future[None] | None = None
    try:
        for offset in range(0, patients, BATCH):
            if (max_seconds is not None and time.monotonic() - t0 > max_seconds) or (should_stop and should_stop()):
                break
            now = utcnow()
            batch = []
            for i in range(start + offset, start + min(offset + BATCH, patients)):
                res, _ = patient(i, rng)
                res, issues = normalize_patient_identifiers(res, index.registry)  # as the master index does
                if issues:
                    raise RuntimeError(f"synthetic resident {i}: {issues[0].diagnostics}")
                assign_card(res, cards.master_document(res), cards.keyring.index_key, cards.keyring.card_root_key)
                batch.append((new_id(), res))
            kept = _claim(index, batch)
            skipped += len(batch) - len(kept)
            docs: list[dict[str, Any]] = []
            postings: dict[str, list[str]] = {}
            card_docs: list[dict[str, Any]] = []
            obs_docs: list[dict[str, Any]] = []
            name_rows: list[tuple[str, str]] = []
            for pid, res in kept:
                doc = repo.build_doc("Patient", pid, 1, now, res, svc.settings.province)
                docs.append(doc)
                _post(postings, pid, "Patient", doc, codes["Patient"])
                name_rows += [(key, pid) for key in sorted(index.name_postings(res))]  # plaintext resource
                for ident in res["identifier"]:
                    if ident.get("system") == "urn:oid:2.16.156.10011.1.19":
                        card_docs.append({"_id": ident["value"], "patient": pid, "status": "active",
                                          "kind": "formal", "since": now, "at": now})
                for _ in range(observations):
                    oid = new_id()
                    odoc = repo.build_doc("Observation", oid, 1, now, observation(pid, rng.choice(LOINC), rng),
                                          svc.settings.province)
                    obs_docs.append(odoc)
                    _post(postings, oid, "Observation", odoc, codes["Observation"])
            names.add(name_rows)
            if pending is not None:
                pending.result()  # at most one batch in flight: memory stays flat
            pending = writer.submit(_write, repo, cards, postings, docs, card_docs, obs_docs)
            written += len(docs)
            obs_written += len(obs_docs)
            bar.update(len(batch))
        if pending is not None:
            pending.result()
        chunk: dict[str, list[str]] = {}
        for key, ids in names.grouped():
            chunk[key] = ids
            if len(chunk) >= BATCH:
                add_postings(index.names, chunk)
                chunk = {}
        add_postings(index.names, chunk)
    finally:
        writer.shutdown(wait=True)
        names.close()
        bar.close()
    return {"patients": written, "skipped": skipped, "observations": obs_written}


def _claim(index: Any, batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Insert the claims of a batch; a resident with an identifier that is taken (by an earlier resident, or
    a duplicate synthetic ID in this batch) is left out and the claims it did get are released."""
    claim_docs, owner = [], []
    for pid, res in batch:
        for e in index.entries(res):
            claim_docs.append({"_id": e.key, "p": pid})
            owner.append(pid)
    failed = insert_new(index.claims, claim_docs)
    taken = {owner[i] for i in failed}
    # Release by _id alone (the one filter FerretDB v1 answers from an index): these claims were inserted
    # by this batch just now, so they name the skipped resident.
    for n, d in enumerate(claim_docs):
        if d["p"] in taken and n not in failed:
            index.claims.delete_one({"_id": d["_id"]})
    return [(pid, res) for pid, res in batch if pid not in taken]


def _write(repo: Any, cards: Any, postings: dict[str, list[str]], docs: list[dict[str, Any]],
           card_docs: list[dict[str, Any]], obs_docs: list[dict[str, Any]]) -> None:
    """One batch, in the order of the API's writes: posting lists before the documents they list."""
    if postings:
        add_postings(repo.keys.col, postings)
    if docs:
        repo.current("Patient").insert_many(docs, ordered=False)
    if card_docs:
        cards.cards.col.insert_many(card_docs, ordered=False)
    if obs_docs:
        repo.current("Observation").insert_many(obs_docs, ordered=False)


def add_postings(col: Any, postings: dict[str, list[str]]) -> None:
    """Posting lists {_id: key, ids: [...]}: inserted in one go when new (the usual case), appended to
    one by one when the key exists already (FerretDB v1 updates are slow and hang in large batches)."""
    from app.mpi.index import bulk

    if not postings:
        return
    keys = list(postings)
    existing = [keys[i] for i in sorted(insert_new(col, [{"_id": k, "ids": postings[k]} for k in keys]))]
    bulk(col, [({"_id": k}, {"$addToSet": {"ids": {"$each": postings[k]}}}, False) for k in existing])


def _post(postings: dict[str, list[str]], rid: str, rtype: str, doc: dict[str, Any], codes: list[str]) -> None:
    from app.store.keys import keys_for

    for key in keys_for(rtype, doc.get("ix", {}), codes):
        postings.setdefault(key, []).append(rid)


@click.command("seed")
@click.option("--patients", default=1000, show_default=True, type=click.IntRange(min=0),
              help="synthetic residents to add")
@click.option("--observations", default=0, show_default=True, type=click.IntRange(min=0),
              help="lab Observations per resident")
@click.option("--start", default=None, type=click.IntRange(min=0),
              help="first synthetic number (default: after what exists)")
@click.option("--demo", is_flag=True, help="a ready demo instead: an organization, a resident with records and an "
              "account, and an OAuth client; prints the token commands")
@click.option("--max-seconds", default=None, type=click.FloatRange(min=0),
              help="stop after the batch during which this many seconds passed (what was seeded is complete)")
@click.option("--no-progress", is_flag=True)
def seed_cmd(patients: int, observations: int, start: int | None, demo: bool, max_seconds: float | None,
             no_progress: bool) -> None:
    """Add synthetic residents and records in bulk (or, with --demo, a small ready demo). SIGTERM stops it
    after the batch in hand, leaving what was seeded complete."""
    from app.cli.common import Timer, node_services, on_terminal, summary
    from app.cli.imports import attach_index
    from app.ops.heap import settle_heap

    timer = Timer()
    with node_services() as svc:
        hooks = attach_index(svc)
        if demo:
            from app.cli.demo import make_demo

            try:
                make_demo(svc)
            finally:
                hooks.release()  # the index's leases, as at the end of a request
            return
        settle_heap()  # start-up done (app/ops/heap.py)
        cards = svc.extensions["ehc"]
        if start is None:
            start = svc.repo.current("Patient").estimated_document_count()
        stop = threading.Event()  # SIGTERM: finish the batch in hand, write the name postings, report
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        out: dict[str, Any] = dict(seed(svc, hooks, cards, patients, observations, start,
                                        progress=on_terminal(not no_progress), max_seconds=max_seconds,
                                        should_stop=stop.is_set))
    out["seconds"] = round(timer.seconds, 1)
    click.echo(json.dumps(out))
    sys.stdout.flush()
    summary(f"ehc seed: {out['patients']:,} residents and {out['observations']:,} observations in {out['seconds']} s "
            f"({out['skipped']:,} skipped: already in the index)")


COMMANDS = [seed_cmd]
