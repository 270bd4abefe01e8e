"""`ehc audit verify|seal|checkpoint`: check the audit trail (`seal --follow`: the sealer process of `ehc serve`).

`ehc audit verify` exits 0 when the trail is intact and 1 naming the first bad event otherwise; it prints the
report as JSON. It checks the SM3 hash chain, the signed checkpoints of EHC_DATA_DIR/audit-checkpoints.jsonl
(or --checkpoints FILE) against the chain and the node's keys (or the keys of --keys FILE, a saved copy of
/ehc/keys), and the patient index of every event against the event (docs/audit.md). On a terminal it draws a
progress bar while it reads the trail, and it ends with a summary line on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from app.crypto import SM2PublicKey
    from app.ehc.signing import SigningKeys
    from app.services import Services


def _services() -> Services:
    from app.cli.common import reach_database
    from app.config import load_settings
    from app.services import build_services

    settings = load_settings()
    reach_database(settings)  # one clear line when the database is away
    return build_services(settings)


class _CountingDatabase:
    """A pymongo Database whose find() cursors advance a progress bar (verify reads each collection once)."""

    def __init__(self, db: Any, bar: Any) -> None:
        self._db, self._bar = db, bar

    def __getitem__(self, name: str) -> Any:
        return _CountingCollection(self._db[name], self._bar)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class _CountingCollection:
    def __init__(self, col: Any, bar: Any) -> None:
        self._col, self._bar = col, bar

    def find(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for doc in self._col.find(*args, **kwargs):
            self._bar.update(1)
            yield doc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._col, name)


def _node_keys(svc: Services) -> SigningKeys:
    from app.ehc.signing import SigningKeys, signing_keys_path
    from app.keyring import keyring_for

    return SigningKeys(signing_keys_path(keyring_for(svc).keys_dir), svc.settings.province)


def _published_keys(path: Path) -> dict[str, SM2PublicKey]:
    from app.audit.checkpoints import public_key_from_jwk

    data: Any = json.loads(path.read_text(encoding="utf-8"))
    out = {}
    for jwk in data.get("keys", []) if isinstance(data, dict) else []:
        try:
            out[str(jwk["kid"])] = public_key_from_jwk(jwk)
        except (KeyError, ValueError):
            continue
    return out


@click.group()
def audit() -> None:
    """The audit trail: verify the chain, its checkpoints and its patient index; seal pending events."""


@audit.command()
@click.option("--no-seal", is_flag=True, help="verify only what is sealed; do not seal pending events first")
@click.option("--checkpoints", "checkpoint_file", type=click.Path(dir_okay=False, path_type=Path),
              help="checkpoint file (JSON lines) to check the chain against [EHC_DATA_DIR/audit-checkpoints.jsonl]")
@click.option("--keys", "keys_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="public keys as /ehc/keys publishes them [the node's own key file]")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def verify(no_seal: bool, checkpoint_file: Path | None, keys_file: Path | None, no_progress: bool) -> None:
    """Recompute the chain; exit 1 naming the first edited, removed, reordered or truncated event."""
    from tqdm import tqdm

    from app.audit import build_trail, chain_name
    from app.audit.chain import EVENTS, CheckpointCheck, IndexCheck
    from app.audit.chain import verify as verify_chain
    from app.audit.checkpoints import FILE_NAME, Checkpoints
    from app.cli.common import Timer, on_terminal, summary

    timer = Timer()

    svc = _services()
    node_keys = _node_keys(svc)
    if not no_seal:
        build_trail(svc, keys=node_keys)[1].seal_all(wait_seconds=20.0)
    published = _published_keys(keys_file) if keys_file else None

    def public_key(kid: str) -> SM2PublicKey | None:
        if published is not None:
            return published.get(kid)
        key = node_keys.get(kid)
        return key.public if key else None

    path = checkpoint_file or svc.settings.data_dir / FILE_NAME
    lines = Checkpoints(path, chain_name(svc), node_keys).lines()
    repo = svc.repo

    def rebuild(doc: dict[str, Any]) -> dict[str, Any]:
        return repo.build_doc(EVENTS, str(doc["_id"]), int(doc["vid"]), doc["ts"], doc["res"], str(doc["prov"]))

    db = svc.handle.db
    head = db["_audit_state"].find_one({"_id": "audit-head"}) or {}
    total = 2 * int(head.get("seq") or 0)  # chain entries and their events, read once each
    with tqdm(total=total or None, unit="doc", desc="ehc audit verify", disable=not on_terminal(not no_progress),
              mininterval=0.5) as bar:
        report = verify_chain(_CountingDatabase(db, bar),
                              checkpoints=CheckpointCheck(lines, chain_name(svc), public_key),
                              index=IndexCheck(rebuild, repo.keyed_codes(EVENTS)))
    click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    summary(f"ehc audit verify: {report.sealed:,} events sealed, {report.pending:,} pending; trail "
            f"{'intact' if report.ok else f'BROKEN at {report.first}'} ({timer.seconds:.1f} s)")
    if not report.ok:
        click.echo(f"audit trail broken at {report.first}", err=True)
        raise SystemExit(1)


@audit.command()
@click.option("--follow", is_flag=True,
              help="keep sealing until stopped (SIGTERM, Ctrl-C): `ehc serve` runs this as its sealer process")
def seal(follow: bool) -> None:
    """Seal pending events now (the server does this in the background)."""
    from app.audit import build_trail

    svc = _services()
    if follow:
        _follow(build_trail(svc, keys=_node_keys(svc))[1])
        return
    result = build_trail(svc, keys=_node_keys(svc))[1].seal_all(wait_seconds=20.0)
    if result is None:
        raise click.ClickException("another process holds the sealing lease; retry")
    click.echo(json.dumps({"sealed": result.sealed, "head": result.head, "waiting": result.waiting,
                           "recovered": result.recovered, "checkpoint": result.checkpoint}))


def _follow(sealer: Any) -> None:
    """Passes back to back while there is a backlog, else every second, until SIGTERM or SIGINT, or until the
    process that started it is gone."""
    import os
    import signal
    import threading
    import time

    from app.audit.plugin import SealLoop

    loop = SealLoop(sealer)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: loop.stop())
    parent = os.getppid()

    def orphaned() -> None:  # the server that started it was killed (SIGKILL): do not outlive it
        while os.getppid() == parent:
            time.sleep(1.0)
        loop.stop()

    threading.Thread(target=orphaned, name="ehc-sealer-parent", daemon=True).start()
    loop.run_until_stopped()


@audit.command()
def checkpoint() -> None:
    """Seal what is pending, then sign and append a checkpoint of the head now."""
    from app.audit import build_trail
    from app.audit.chain import HEAD_ID, STATE

    svc = _services()
    sealer = build_trail(svc, keys=_node_keys(svc), checkpoint_interval=float("inf"))[1]
    if sealer.seal_all(wait_seconds=20.0) is None:
        raise click.ClickException("another process holds the sealing lease; retry")
    head = svc.handle.db[STATE].find_one({"_id": HEAD_ID}) or {}
    if not head.get("seq"):
        raise click.ClickException("the chain is empty: nothing to checkpoint")
    assert sealer.checkpoints is not None
    cp = sealer.checkpoints.write(int(head["seq"]), str(head["h"]))
    click.echo(json.dumps(cp.to_json()))


COMMANDS = [audit]
