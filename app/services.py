"""Wiring: builds the storage, search and policy objects once per process from Settings.

No Flask here: the CLI, the benchmarks and the web app share it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.core.access import AccessListener, AccessPolicy, AccessRecord, OpenPolicy
from app.keyring import load_keyring
from app.profiles import PROFILES_DIR  # fhir_profiles/ in a source tree, app/_profiles when installed
from app.search.registry import SearchRegistry
from app.store.database import DatabaseHandle
from app.store.embedded import EmbeddedDatabase
from app.store.events import EventBus
from app.store.journal import TransactionJournal
from app.store.leases import Leases
from app.store.protect import FieldProtector
from app.store.repository import Repository
from app.store.searcher import Searcher


def load_resource_types(profiles_dir: Path = PROFILES_DIR) -> dict[str, dict[str, Any]]:
    data = json.loads((profiles_dir / "resource-types.json").read_text(encoding="utf-8"))
    return dict(data["resourceTypes"])


def database_uri(settings: Settings) -> str:
    """The configured URI, or the embedded database (started if needed)."""
    if settings.mongodb_uri:
        return settings.mongodb_uri
    db = EmbeddedDatabase(settings.data_dir / "db", settings.embedded_port)
    db.start()
    return db.uri


@dataclass
class Services:
    settings: Settings
    handle: DatabaseHandle
    registry: SearchRegistry
    resource_types: dict[str, dict[str, Any]]
    events: EventBus
    repo: Repository
    searcher: Searcher
    journal: TransactionJournal
    leases: Leases
    policy: AccessPolicy = field(default_factory=OpenPolicy)
    access_listeners: list[AccessListener] = field(default_factory=list)
    profiles_dir: Path = PROFILES_DIR
    extensions: dict[str, Any] = field(default_factory=dict)

    def record_access(self, record: AccessRecord) -> None:
        for listener in self.access_listeners:
            listener(record)


def build_services(settings: Settings, profiles_dir: Path = PROFILES_DIR) -> Services:
    handle = DatabaseHandle(database_uri(settings), settings.db_name)
    registry = SearchRegistry.from_profiles(profiles_dir)
    resource_types = load_resource_types(profiles_dir)
    events = EventBus()
    keyring = load_keyring(settings)
    protector = FieldProtector.from_profiles(keyring.field_cipher(), profiles_dir)
    independent = [t for t, conf in resource_types.items() if conf.get("dependent") is False]
    keyed = {t: conf["keyedReferences"] for t, conf in resource_types.items() if "keyedReferences" in conf}
    repo = Repository(handle, registry, events, resource_types.keys(), protector, independent, keyed)
    repo.ensure_indexes()
    journal = TransactionJournal(repo, settings.journal_owner_timeout)
    journal.recover()
    svc = Services(settings, handle, registry, resource_types, events, repo, Searcher(repo), journal,
                   Leases(handle.db["_leases"]), profiles_dir=profiles_dir)
    svc.extensions["keyring"] = keyring
    # The change gate in storage asks whatever access policy is in force (the auth layer replaces the open one).
    repo.decide_change = lambda principal, change: svc.policy.admit(principal, change)
    return svc
