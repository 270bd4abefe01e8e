"""Configuration from the environment. One typed object; nothing reads os.environ elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "ehc"


@dataclass(frozen=True)
class Settings:
    mongodb_uri: str | None = None  # None: start the embedded FerretDB
    province: str = "11"  # GB/T 2260 two digits; "00" for the national node
    base_url: str | None = None  # absolute FHIR base, e.g. https://ehc.example.cn/fhir; None: from request
    national_url: str | None = None  # a province node: the national node's FHIR base (federation)
    data_dir: Path = field(default_factory=_default_data_dir)
    embedded_port: int = 27018
    max_body_bytes: int = 10 * 1024 * 1024
    default_count: int = 20
    max_count: int = 500
    max_bundle_entries: int = 1000  # a batch or transaction: each entry is a request's work
    auth_required: bool = True  # switched off only by tests and benchmarks that measure its cost
    # A process whose heartbeat is older than this many seconds is dead: its pending transaction journals are
    # undone (at start-up, before each transaction and on every heartbeat) and its history slots taken over.
    journal_owner_timeout: float = 5.0
    index_key_file: Path | None = None  # platform master-index key (SM3-HMAC)
    card_root_key_file: Path | None = None  # SM4 root key for card ID diversification
    field_key_file: Path | None = None  # SM4 key for ID numbers and phones at rest
    # Audit records made durable in data_dir/audit-spool first and shipped to the database in large batches
    # (app.audit.spool); off: each group-commit batch is one insert (data_dir need not outlive the process).
    audit_spool: bool = True
    # Seal the audit trail in a background thread of every server process; `ehc serve` turns it off for its
    # workers and runs one sealer process instead (app.ops.sealer), so that sealing never holds a worker's GIL.
    background_sealing: bool = True
    # How many reverse proxies stand in front of the server (deploy/nginx.conf: one). Their X-Forwarded-For and
    # X-Forwarded-Proto are believed for that many hops, so that the rate limits and the audit trail see each
    # resident's own address; 0 (the default) believes none: anyone could write them.
    trusted_proxies: int = 0

    @property
    def db_name(self) -> str:
        """The database named in the URI, 'ehc' when it names none."""
        if not self.mongodb_uri:
            return "ehc"
        path = urlparse(self.mongodb_uri).path.lstrip("/")
        return path.split("?")[0] or "ehc"

    def with_overrides(self, **overrides: Any) -> Settings:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known})


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    data_dir = Path(env["EHC_DATA_DIR"]) if env.get("EHC_DATA_DIR") else _default_data_dir()

    def path(name: str) -> Path | None:
        return Path(env[name]) if env.get(name) else None

    return Settings(
        mongodb_uri=env.get("EHC_MONGODB_URI") or None,
        province=env.get("EHC_PROVINCE", "11"),
        base_url=(env.get("EHC_BASE_URL") or "").rstrip("/") or None,
        national_url=(env.get("EHC_NATIONAL_URL") or "").rstrip("/") or None,
        data_dir=data_dir,
        embedded_port=int(env.get("EHC_DB_PORT", "27018")),
        max_body_bytes=int(env.get("EHC_MAX_BODY_BYTES", str(10 * 1024 * 1024))),
        default_count=int(env.get("EHC_DEFAULT_COUNT", "20")),
        max_count=int(env.get("EHC_MAX_COUNT", "500")),
        max_bundle_entries=int(env.get("EHC_MAX_BUNDLE_ENTRIES", "1000")),
        auth_required=_bool(env.get("EHC_AUTH_REQUIRED", "true")),
        journal_owner_timeout=float(env.get("EHC_JOURNAL_OWNER_TIMEOUT", "5")),
        index_key_file=path("EHC_INDEX_KEY_FILE"),
        card_root_key_file=path("EHC_CARD_ROOT_KEY_FILE"),
        field_key_file=path("EHC_FIELD_KEY_FILE"),
        audit_spool=_bool(env.get("EHC_AUDIT_SPOOL", "on")),
        background_sealing=_bool(env.get("EHC_BACKGROUND_SEALING", "on")),
        trusted_proxies=int(env.get("EHC_TRUSTED_PROXIES", "0")),
    )
