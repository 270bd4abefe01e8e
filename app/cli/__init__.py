"""The `ehc` command (docs/architecture.md). Each area adds its commands in its own module (a COMMANDS list)."""

from __future__ import annotations

from typing import Any

import click

from app.cli import audit, clients, db, imports, keys, nodes, reindex, seed, serve, status, users


class _Main(click.Group):
    """A database that goes away mid-command is one line naming the URI, never a driver traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

        try:
            return super().invoke(ctx)
        except (ConnectionFailure, ServerSelectionTimeoutError) as err:
            from app.cli.common import unreachable_message
            from app.config import load_settings

            settings = load_settings()
            uri = settings.mongodb_uri or f"mongodb://127.0.0.1:{settings.embedded_port}/"
            raise click.ClickException(unreachable_message(uri, type(err).__name__)) from None


@click.group(cls=_Main)
def main() -> None:
    """电子健康卡 FHIR server: serve, manage the embedded database, import card systems, keys, clients."""


main.add_command(serve.serve)
main.add_command(db.db)
for _module in (imports, clients, keys, audit, seed, users, status, nodes, reindex):
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)
