"""The `ehc` command (DESIGN §6). Each area adds its commands in its own module (a COMMANDS list)."""

from __future__ import annotations

import click

from app.cli import audit, clients, db, imports, keys, nodes, seed, serve, users


@click.group()
def main() -> None:
    """电子健康卡 FHIR server: serve, manage the embedded database, import card systems, keys, clients."""


main.add_command(serve.serve)
main.add_command(db.db)
for _module in (imports, clients, keys, audit, seed, users, nodes):
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)
