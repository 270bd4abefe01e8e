"""`ehc import FILE --report REPORT`: bulk import of a hospital card system (DESIGN §3, §6)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def services_with_index():  # type: ignore[no-untyped-def]
    """Services with the MPI and card handlers attached, as the web app has them (no Flask)."""
    from app.config import load_settings
    from app.ehc.plugin import attach
    from app.mpi.plugin import setup
    from app.services import build_services

    svc = build_services(load_settings())
    hooks = setup(svc)
    attach(svc)
    return svc, hooks


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--report", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="one row per input row; CSV when it ends in .csv, NDJSON otherwise")
@click.option("--workers", default=4, show_default=True, help="rows written concurrently (order kept)")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def import_file(file: Path, report: Path, workers: int, no_progress: bool) -> None:
    """Link every row of FILE (CSV or NDJSON of Patient) to the master patient index."""
    from app.fhir.validation import Validator
    from app.mpi.importer import Importer

    svc, hooks = services_with_index()
    validator = Validator(svc.profiles_dir)

    def validate(resource: dict) -> list[str]:
        return [i.diagnostics for i in validator.issues(resource, "Patient")]

    try:
        counts = Importer(svc, hooks, validate).run(file, report, progress=not no_progress, workers=workers)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps({"file": str(file), "report": str(report), **counts}, ensure_ascii=False))
    sys.stdout.flush()


COMMANDS = [import_file]
