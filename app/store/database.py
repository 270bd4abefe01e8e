"""Connecting to MongoDB (or FerretDB) and preparing collections.

When the database cannot be reached, every operation fails within about a second (server selection and
connection timeouts below, instead of pymongo's 30 s / 20 s), and the store reports it as DatabaseUnavailable,
which the web edge answers with 503, `Retry-After` and an OperationOutcome. Options given in the URI
(`?serverSelectionTimeoutMS=...`) win over these defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from pymongo import MongoClient, uri_parser
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, ConnectionFailure

from app.core.errors import FhirError

log = logging.getLogger("ehc.store")

# Fail fast when the server is gone (a stopped database answers "connection refused" at once; a vanished host
# is bounded by the connect timeout); an operation on a connected but hung server is bounded by the socket
# timeout, long enough for the slowest legitimate query.
CLIENT_DEFAULTS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 500,
    "connectTimeoutMS": 1000,
    "socketTimeoutMS": 60000,
    "waitQueueTimeoutMS": 10000,
}
RETRY_AFTER_SECONDS = 5

# The pymongo errors that mean "the database cannot be reached" (ServerSelectionTimeoutError, AutoReconnect,
# NetworkTimeout, WaitQueueTimeoutError are all ConnectionFailure).
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (ConnectionFailure,)


class DatabaseUnavailable(FhirError):
    """The database cannot be reached: 503 with Retry-After; the client may retry the same request."""

    def __init__(self, diagnostics: str = "the database is unavailable; retry shortly") -> None:
        super().__init__(503, diagnostics, code="transient",
                         headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def client_options(uri: str, **overrides: Any) -> dict[str, Any]:
    """Our defaults, minus what the URI sets itself, plus explicit overrides."""
    in_uri = {k.lower() for k in uri_parser.parse_uri(uri, validate=False).get("options", {})}
    opts: dict[str, Any] = {"tz_aware": False, "maxPoolSize": 50}
    opts.update({k: v for k, v in CLIENT_DEFAULTS.items() if k.lower() not in in_uri})
    opts.update(overrides)
    return opts


class DatabaseHandle:
    """The database plus what we know of the server behind it."""

    def __init__(self, uri: str, name: str, **client_options_: Any) -> None:
        self.client: MongoClient = MongoClient(uri, **client_options(uri, **client_options_))
        self.db: Database = self.client[name]
        self._before_close: list[Callable[[], None]] = []

    @cached_property
    def is_ferretdb(self) -> bool:
        """FerretDB v1 answers buildInfo with a ferretdbVersion field."""
        info = self.client.admin.command("buildInfo")
        return "ferretdbVersion" in info or "ferretdb" in str(info.get("version", "")).lower()

    @cached_property
    def supports_secondary_indexes(self) -> bool:
        """FerretDB v1 on SQLite maintains secondary indexes but never uses them for queries; they only
        slow writes there. On MongoDB they serve every search."""
        return not self.is_ferretdb

    def before_close(self, flush: Callable[[], None]) -> None:
        """Run `flush` when the handle is closed, while the client still works (the audit spool ships)."""
        self._before_close.append(flush)

    def close(self) -> None:
        flushes, self._before_close = self._before_close, []
        for flush in flushes:
            try:
                flush()
            except Exception:  # noqa: BLE001 - closing goes on; what was not flushed is recovered later
                log.exception("database: a flush before closing failed")
        self.client.close()


def insert_new(col: Collection, docs: list[dict[str, Any]]) -> set[int]:
    """Insert documents in one command, skipping those whose _id exists already: returns their positions in
    `docs`. Any other write error is raised. (The unique _id is how claims, leases, posting-list heads and
    batch-created resources detect that someone else got there first.)"""
    if not docs:
        return set()
    try:
        col.insert_many(docs, ordered=False)
    except BulkWriteError as err:
        errors = err.details.get("writeErrors") or []
        if not errors or any(e.get("code") != 11000 for e in errors):
            raise
        return {int(e["index"]) for e in errors}
    return set()
