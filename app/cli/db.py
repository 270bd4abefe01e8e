"""`ehc db start|stop|status|install`: the embedded database (FerretDB on SQLite, or mongod on PATH)."""

from __future__ import annotations

import json

import click

from app.cli.common import PORT
from app.config import load_settings
from app.store.embedded import EmbeddedDatabase, install_ferretdb


def _embedded(port: int | None) -> EmbeddedDatabase:
    settings = load_settings()
    return EmbeddedDatabase(settings.data_dir / "db", port or settings.embedded_port)


@click.group()
def db() -> None:
    """The embedded default database on 127.0.0.1."""


@db.command()
@click.option("--port", type=PORT, default=None, help="TCP port on 127.0.0.1 (default EHC_DB_PORT or 27018)")
def start(port: int | None) -> None:
    """Start it (building FerretDB first if needed)."""
    embedded = _embedded(port)
    pid = embedded.start()
    click.echo(json.dumps({"started": True, "pid": pid, "uri": embedded.uri}))


@db.command()
@click.option("--port", type=PORT, default=None)
def stop(port: int | None) -> None:
    """Stop it."""
    click.echo(json.dumps({"stopped": _embedded(port).stop()}))


@db.command()
@click.option("--port", type=PORT, default=None)
def status(port: int | None) -> None:
    """Say whether it runs (exit 1 when not)."""
    st = _embedded(port).status()
    click.echo(json.dumps(st))
    raise SystemExit(0 if st["running"] else 1)


@db.command()
def install() -> None:
    """Build FerretDB v1.24.2 now (normally done on first start)."""
    click.echo(str(install_ferretdb()))
