"""`ehc import FILE --report REPORT`: bulk import of a hospital card system (docs/mpi.md, "Bulk import")."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click

# The encodings --encoding takes: in each, a line ends with the one byte 0x0A (the progress bar counts them) and
# no character contains that byte. GBK is what Excel on a Chinese system saves; GB18030 is its superset.
ENCODINGS = ("utf-8", "gb18030", "gbk")


def attach_index(svc: Any) -> Any:
    """The MPI and card handlers attached to svc, as the web app has them (no Flask); returns the MPI hooks."""
    from app.ehc.plugin import attach
    from app.mpi.plugin import setup

    hooks = setup(svc)
    attach(svc)
    return hooks


def services_with_index():  # type: ignore[no-untyped-def]
    """Services with the MPI and card handlers attached (for benchmarks; commands use node_services)."""
    from app.config import load_settings
    from app.services import build_services

    svc = build_services(load_settings())
    return svc, attach_index(svc)


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--report", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="one row per input row; CSV when it ends in .csv, NDJSON otherwise")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=1),
              help="rows written concurrently (order kept): with --batch, the rows that are not new residents")
@click.option("--batch", "batch", default=500, show_default=True, type=click.IntRange(1, 2000),
              help="rows written together (new residents in a few commands a batch); 1: one row at a time, "
                   "with --workers")
@click.option("--encoding", default="utf-8", show_default=True, type=click.Choice(ENCODINGS, case_sensitive=False),
              help="the file's text encoding: gb18030 (or gbk) for files saved by Excel on a Chinese system")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def import_file(file: Path, report: Path, workers: int, batch: int, encoding: str, no_progress: bool) -> None:
    """Link every row of FILE (CSV or NDJSON of Patient) to the master patient index."""
    from app.cli.common import Timer, node_services, on_terminal, summary
    from app.fhir.validation import Validator
    from app.mpi.importer import Importer, check_header
    from app.ops.heap import settle_heap

    if not report.parent.is_dir():
        raise click.ClickException(f"the report's folder {report.parent} does not exist; create it or choose "
                                   "another --report path")
    if report.exists() and report.samefile(file):  # also through a link: writing the report would erase the input
        raise click.ClickException(f"the report {report} is the input file; choose another --report path")
    try:
        check_header(file, encoding)
    except ValueError as exc:  # a decoding error included
        raise click.ClickException(str(exc)) from None
    timer = Timer()
    with node_services() as svc:
        hooks = attach_index(svc)
        validator = Validator(svc.profiles_dir)
        settle_heap()  # start-up done: about a tenth less CPU for the rows (app/ops/heap.py)

        def validate(resource: dict[str, Any]) -> list[str]:
            return [i.diagnostics for i in validator.issues(resource, "Patient")]

        try:
            counts = Importer(svc, hooks, validate, batch_size=batch).run(
                file, report, progress=on_terminal(not no_progress), workers=workers, encoding=encoding)
        except ValueError as exc:  # a decoding error, a CSV row that cannot be delimited (an unclosed quote)
            raise click.ClickException(str(exc)) from None
        except csv.Error as exc:  # read_rows turns the csv module's errors into the above: a last resort
            raise click.ClickException(f"{file} cannot be read as CSV: {exc}") from None
        except KeyboardInterrupt:
            # Ctrl-C: nothing is half-written (docs/mpi.md), so say how to finish rather than print a traceback.
            click.echo(f"\nehc import: interrupted. {report} lists the rows done so far (rows after them, up to "
                       "about two batches, may have been written too). Run the same command again to finish: the "
                       "rows already imported are reported unchanged.", err=True)
            sys.exit(130)  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C
        except OSError as exc:
            raise click.ClickException(f"cannot write the report {report}: {exc.strerror}") from None
    click.echo(json.dumps({"file": str(file), "report": str(report), **counts}, ensure_ascii=False))
    sys.stdout.flush()
    rows = sum(counts.values())
    summary(f"ehc import: {rows:,} rows in {timer.seconds:.1f} s ({rows / max(timer.seconds, 1e-9):,.0f} rows/s): "
            f"{counts['created']:,} created, {counts['linked']:,} linked, {counts['unchanged']:,} unchanged, "
            f"{counts['rejected']:,} rejected; report {report}")


COMMANDS = [import_file]
