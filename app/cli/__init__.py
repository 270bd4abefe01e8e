"""The `ehc` command (DESIGN §6). Each area adds its commands in its own module."""

from __future__ import annotations

import importlib

import click

from app.cli.db import db
from app.cli.serve import serve

SUBCOMMANDS = ("app.cli.imports", "app.cli.clients", "app.cli.keys", "app.cli.audit", "app.cli.seed",
               "app.cli.users")


@click.group()
def main() -> None:
    """电子健康卡 FHIR server: serve, manage the embedded database, import card systems, keys, clients."""


main.add_command(serve)
main.add_command(db)
for _name in SUBCOMMANDS:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as _err:
        if _err.name != _name:
            raise
        continue
    for _cmd in getattr(_mod, "COMMANDS", ()):
        main.add_command(_cmd)
