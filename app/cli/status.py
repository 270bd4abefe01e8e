"""`ehc status`: the node at a glance: database, keys, audit head, pending journals and audit events (and spool
segments not shipped yet), clients,
record counts. JSON on stdout; exit 1 when the database cannot be reached.

Counts use a 2-second budget each (FerretDB counts by scanning); a count that takes longer is reported as null.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

COUNT_TIMEOUT = 2.0


def _bounded(read: Callable[[], int]) -> int | None:
    """A count read within COUNT_TIMEOUT; None when the database does not answer in time."""
    import pymongo
    from pymongo.errors import PyMongoError

    try:
        with pymongo.timeout(COUNT_TIMEOUT):
            return int(read())
    except PyMongoError:
        return None


def _count(col: Any, flt: dict[str, Any] | None = None) -> int | None:
    return _bounded(lambda: col.count_documents(flt or {}))


def _pending(db: Any) -> int | None:
    """Audit records waiting to be sealed (app.audit.pending: they are stored in batches)."""
    from app.audit.chain import PENDING
    from app.audit.pending import count

    return _bounded(lambda: count(db[PENDING]))


def _keys(settings: Any) -> dict[str, Any]:
    from app.ehc.signing import SigningKeys, signing_keys_path
    from app.keyring import keys_dir

    kdir = keys_dir(settings)
    files = {"index": settings.index_key_file or kdir / "index.key",
             "card-root": settings.card_root_key_file or kdir / "card-root.key",
             "field": settings.field_key_file or kdir / "field.key"}
    out: dict[str, Any] = {"dir": str(kdir),
                           "platform": {k: ("ok" if os.access(p, os.R_OK) else "missing") for k, p in files.items()}}
    path = signing_keys_path(kdir)
    if path.exists():
        signing = SigningKeys(path, settings.province)
        keys = signing.all()
        out["signing"] = {"count": len(keys), "current": signing.current().kid if keys else None}
    else:
        out["signing"] = {"count": 0, "current": None}
    return out


@click.command("status")
def status() -> None:
    """Summarise the node: database, keys, audit head, pending journals, counts."""
    from app.cli.common import DatabaseUnreachable, ping
    from app.config import load_settings
    from app.store.embedded import EmbeddedDatabase

    settings = load_settings()
    report: dict[str, Any] = {"province": settings.province, "data_dir": str(settings.data_dir),
                              "base_url": settings.base_url}
    if settings.mongodb_uri:
        uri = settings.mongodb_uri
        report["database"] = {"uri": uri, "embedded": False}
    else:
        embedded = EmbeddedDatabase(settings.data_dir / "db", settings.embedded_port)
        st = embedded.status()
        uri = embedded.uri
        report["database"] = {"uri": uri, "embedded": True, "running": st["running"], "pid": st["pid"]}
    report["keys"] = _keys(settings)
    if report["database"].get("running") is False:
        report["database"]["reachable"] = False
        report["database"]["error"] = "the embedded database is not running: `ehc db start` (`ehc serve` starts it)"
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        raise SystemExit(1)
    try:
        ping(uri)
    except DatabaseUnreachable as err:
        report["database"]["reachable"] = False
        report["database"]["error"] = err.message
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        raise SystemExit(1) from None
    report["database"]["reachable"] = True
    from pymongo import MongoClient

    from app.audit.spool import segments, spool_dir

    client: MongoClient[Any] = MongoClient(uri, serverSelectionTimeoutMS=2000)
    try:
        db = client[settings.db_name]
        info = client.admin.command("buildInfo")
        report["database"]["server"] = (f"FerretDB {info['ferretdbVersion']}" if "ferretdbVersion" in info
                                        else f"MongoDB {info.get('version')}")
        report["database"]["name"] = settings.db_name
        head = db["_audit_state"].find_one({"_id": "audit-head"}) or {}
        report["audit"] = {"sealed": head.get("seq", 0), "head": head.get("h"),
                           "pending": _pending(db),
                           "spooled_segments": len(segments(spool_dir(settings.data_dir, settings.db_name)))}
        report["journals_pending"] = _count(db["_journal"])
        report["clients"] = _count(db["auth_clients"])
        types = ("Patient", "Observation", "Organization", "Consent", "DocumentReference", "AuditEvent")
        report["counts"] = {t: _count(db[t], {"del": {"$ne": True}}) for t in types}
    finally:
        client.close()
    click.echo(json.dumps(report, ensure_ascii=False, indent=2))


COMMANDS = [status]
