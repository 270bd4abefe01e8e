"""Connecting to MongoDB (or FerretDB) and preparing collections."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database


class DatabaseHandle:
    """The database plus what we know of the server behind it."""

    def __init__(self, uri: str, name: str, **client_options: Any) -> None:
        opts: dict[str, Any] = {"tz_aware": False, "maxPoolSize": 50, "serverSelectionTimeoutMS": 10000}
        opts.update(client_options)
        self.client: MongoClient = MongoClient(uri, **opts)
        self.db: Database = self.client[name]

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

    def close(self) -> None:
        self.client.close()
