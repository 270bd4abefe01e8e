"""What the `ehc` commands share: reaching the database (one clear line when it is away), the node's services
for one command, progress bars that show only on a terminal, and summary lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from app.config import Settings
    from app.services import Services

REACH_TIMEOUT = 1.0  # seconds: an unreachable database is reported within about 2 s of starting the command
PORT = click.IntRange(1, 65535)  # a TCP port option: 0 would listen on a port nobody is told of


class DatabaseUnreachable(click.ClickException):
    """Printed as one line (`Error: ...`), exit status 1."""


def unreachable_message(uri: str, detail: str = "") -> str:
    return (f"cannot reach the database at {_safe_uri(uri)}{f' ({detail})' if detail else ''}. "
            "Start MongoDB there, or unset EHC_MONGODB_URI to use the embedded database (ehc db start).")


def _safe_uri(uri: str) -> str:
    """The URI without a password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def ping(uri: str, timeout: float = REACH_TIMEOUT) -> None:
    """Raise DatabaseUnreachable unless the server at uri answers a ping within timeout seconds."""
    from pymongo import MongoClient
    from pymongo.errors import ConfigurationError, PyMongoError

    ms = int(timeout * 1000)
    try:
        client: MongoClient[Any] = MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms,
                                               socketTimeoutMS=ms)
    except ConfigurationError as err:
        raise DatabaseUnreachable(f"EHC_MONGODB_URI is not a valid MongoDB URI: {err}") from None
    try:
        client.admin.command("ping")
    except PyMongoError as err:
        raise DatabaseUnreachable(unreachable_message(uri, type(err).__name__)) from None
    finally:
        client.close()


def reach_database(settings: Settings) -> tuple[str, Any]:
    """The database URI, checked; starts the embedded database when EHC_MONGODB_URI is unset.
    Returns (uri, the EmbeddedDatabase this call started, or None)."""
    from app.store.embedded import EmbeddedDatabase, EmbeddedDatabaseError

    if settings.mongodb_uri:
        ping(settings.mongodb_uri)
        return settings.mongodb_uri, None
    embedded = EmbeddedDatabase(settings.data_dir / "db", settings.embedded_port)
    was_running = bool(embedded.status()["running"])
    try:
        embedded.start()
    except EmbeddedDatabaseError as err:
        raise click.ClickException(f"the embedded database did not start: {err}") from None
    ping(embedded.uri, timeout=10.0)
    return embedded.uri, None if was_running else embedded


@contextmanager
def node_services(settings: Settings | None = None) -> Iterator[Services]:
    """The node's services for one command. An embedded database started for it is stopped afterwards."""
    from pymongo.errors import PyMongoError

    from app.config import load_settings

    settings = settings or load_settings()
    uri, started = reach_database(settings)  # before the heavy imports: an absent database is said at once
    try:
        from app.services import build_services

        try:
            svc = build_services(settings)
        except PyMongoError as err:
            raise DatabaseUnreachable(unreachable_message(uri, type(err).__name__)) from None
        try:
            yield svc
        finally:
            svc.handle.close()
    finally:
        if started is not None:
            started.stop()


def on_terminal(progress: bool = True) -> bool:
    """Progress bars only where someone watches them."""
    return progress and sys.stderr.isatty()


def summary(text: str) -> None:
    """The final human line of a long command, on stderr (stdout keeps the JSON for scripts)."""
    click.echo(text, err=True)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0
