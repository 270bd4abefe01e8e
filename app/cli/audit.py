"""`ehc audit verify|seal`: check the SM3 hash chain of the audit trail (DESIGN §5, §6).

`ehc audit verify` exits 0 when the chain is intact and 1 naming the first bad event otherwise; it prints
the report as JSON (with the head hash, worth recording outside the database: see docs/audit.md).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from app.services import Services


def _services() -> Services:
    from app.config import load_settings
    from app.services import build_services

    return build_services(load_settings())


@click.group()
def audit() -> None:
    """The audit trail: verify the hash chain, seal pending events."""


@audit.command()
@click.option("--no-seal", is_flag=True, help="verify only what is sealed; do not seal pending events first")
def verify(no_seal: bool) -> None:
    """Recompute the chain; exit 1 naming the first edited, removed or reordered event."""
    from app.audit import build_trail
    from app.audit.chain import verify as verify_chain

    svc = _services()
    if not no_seal:
        build_trail(svc)[1].seal(wait_seconds=20.0)
    report = verify_chain(svc.handle.db)
    click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    if not report.ok:
        click.echo(f"audit chain broken at {report.first}", err=True)
        raise SystemExit(1)


@audit.command()
def seal() -> None:
    """Seal pending events now (the server does this in the background)."""
    from app.audit import build_trail

    result = build_trail(_services())[1].seal(wait_seconds=20.0)
    if result is None:
        raise click.ClickException("another process holds the sealing lease; retry")
    click.echo(json.dumps({"sealed": result.sealed, "head": result.head, "waiting": result.waiting,
                           "recovered": result.recovered}))


COMMANDS = [audit]
