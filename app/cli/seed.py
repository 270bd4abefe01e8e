"""`ehc seed --patients N --observations M`: synthetic residents (valid ID numbers, Chinese names) with M lab
Observations each, written in bulk for demos and benchmarks.

The documents are exactly what POST /fhir/Patient would store (normalised identifiers, formal card and master
index ID, claims, card status, name postings, the store's posting lists), but written with insert_many in
batches instead of one write per resident. A resident whose ID number or record number is already in the
index is skipped, so seeding twice adds new residents only.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import click
from pymongo.errors import BulkWriteError

BATCH = 1000
LOINC = ("2339-0", "718-7", "2093-3", "4548-4", "8480-6", "8462-4", "29463-7", "8302-2")


def seed(svc: Any, hooks: Any, cards: Any, patients: int, observations: int, start: int = 0, seed_value: int = 7,
         progress: bool = True) -> dict[str, int]:
    from tqdm import tqdm

    from app.core.ids import new_id
    from app.core.timeutil import utcnow
    from app.ehc.cards import assign_card
    from app.synthetic import observation, patient

    rng = random.Random(seed_value + start)
    index, repo = hooks.index, svc.repo
    codes = {t: [c for c, p in repo.registry.params(t).items() if p.type == "reference"]
             for t in ("Patient", "Observation")}
    written = skipped = obs_written = 0
    names: dict[str, list[str]] = {}  # name postings of the whole run, written once at the end
    bar = tqdm(total=patients, unit="resident", disable=not progress, desc="ehc seed", mininterval=0.5)
    for offset in range(0, patients, BATCH):
        now = utcnow()
        batch = []
        for i in range(start + offset, start + min(offset + BATCH, patients)):
            res, _ = patient(i, rng)
            assign_card(res, cards.master_document(res), cards.keyring.index_key, cards.keyring.card_root_key)
            batch.append((new_id(), res))
        # Claims first: a resident whose identifier is taken (a duplicate synthetic ID) is left out.
        claim_docs, owner = [], []
        for pid, res in batch:
            for e in index.entries(res):
                claim_docs.append({"_id": e.key, "p": pid})
                owner.append(pid)
        taken: set[str] = set()
        try:
            index.claims.insert_many(claim_docs, ordered=False)
        except BulkWriteError as err:
            for e in err.details.get("writeErrors", []):
                taken.add(owner[e["index"]])
        if taken:  # release what the skipped residents did claim
            index.claims.delete_many({"_id": {"$in": [d["_id"] for d in claim_docs if d["p"] in taken]},
                                      "p": {"$in": sorted(taken)}})
        kept = [(pid, res) for pid, res in batch if pid not in taken]
        skipped += len(batch) - len(kept)
        docs: list[dict[str, Any]] = []
        postings: dict[str, list[str]] = {}
        card_docs: list[dict[str, Any]] = []
        obs_docs: list[dict[str, Any]] = []
        for pid, res in kept:
            doc = repo.build_doc("Patient", pid, 1, now, res, svc.settings.province)
            docs.append(doc)
            _post(postings, pid, "Patient", doc, codes["Patient"])
            for key in index.name_postings(res):  # the plaintext resource: doc["res"] may be encrypted
                names.setdefault(key, []).append(pid)
            for ident in res["identifier"]:
                if ident.get("system") == "urn:oid:2.16.156.10011.1.19":
                    card_docs.append({"_id": ident["value"], "patient": pid, "status": "active", "kind": "formal",
                                      "since": now, "at": now})
            for _ in range(observations):
                oid = new_id()
                odoc = repo.build_doc("Observation", oid, 1, now, observation(pid, rng.choice(LOINC), rng),
                                      svc.settings.province)
                obs_docs.append(odoc)
                _post(postings, oid, "Observation", odoc, codes["Observation"])
        if docs:
            add_postings(repo.keys.col, postings)
            repo.current("Patient").insert_many(docs, ordered=False)
            cards.cards.col.insert_many(card_docs, ordered=False)
        if obs_docs:
            repo.current("Observation").insert_many(obs_docs, ordered=False)
        written += len(docs)
        obs_written += len(obs_docs)
        bar.update(len(batch))
    keys = sorted(names)
    for i in range(0, len(keys), BATCH):
        add_postings(index.names, {k: names[k] for k in keys[i: i + BATCH]})
    bar.close()
    return {"patients": written, "skipped": skipped, "observations": obs_written}


def add_postings(col: Any, postings: dict[str, list[str]]) -> None:
    """Posting lists {_id: key, ids: [...]}: inserted in one go when new (the usual case), appended to
    one by one when the key exists already (FerretDB v1 updates are slow and hang in large batches)."""
    from app.mpi.index import bulk

    if not postings:
        return
    try:
        col.insert_many([{"_id": k, "ids": v} for k, v in postings.items()], ordered=False)
        return
    except BulkWriteError as err:
        keys = list(postings)
        existing = [keys[e["index"]] for e in err.details.get("writeErrors", []) if e.get("code") == 11000]
    bulk(col, [({"_id": k}, {"$addToSet": {"ids": {"$each": postings[k]}}}, False) for k in existing])


def _post(postings: dict[str, list[str]], rid: str, rtype: str, doc: dict[str, Any], codes: list[str]) -> None:
    from app.store.keys import keys_for

    for key in keys_for(rtype, doc.get("ix", {}), codes):
        postings.setdefault(key, []).append(rid)


@click.command("seed")
@click.option("--patients", default=1000, show_default=True, help="synthetic residents to add")
@click.option("--observations", default=0, show_default=True, help="lab Observations per resident")
@click.option("--start", default=None, type=int, help="first synthetic number (default: after what exists)")
@click.option("--demo", is_flag=True, help="a ready demo instead: an organization, a resident with records and an "
              "account, and an OAuth client; prints the token commands")
@click.option("--no-progress", is_flag=True)
def seed_cmd(patients: int, observations: int, start: int | None, demo: bool, no_progress: bool) -> None:
    """Add synthetic residents and records in bulk (or, with --demo, a small ready demo)."""
    from app.cli.common import Timer, node_services, on_terminal, summary
    from app.cli.imports import attach_index

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
        cards = svc.extensions["ehc"]
        if start is None:
            start = svc.repo.current("Patient").estimated_document_count()
        out: dict[str, Any] = dict(seed(svc, hooks, cards, patients, observations, start,
                                        progress=on_terminal(not no_progress)))
    out["seconds"] = round(timer.seconds, 1)
    click.echo(json.dumps(out))
    sys.stdout.flush()
    summary(f"ehc seed: {out['patients']:,} residents and {out['observations']:,} observations in {out['seconds']} s "
            f"({out['skipped']:,} skipped: already in the index)")


COMMANDS = [seed_cmd]
