"""`ehc reindex`: rebuild the search index values of the stored resources after an upgrade (app.store.reindex)."""

from __future__ import annotations

import json

import click


@click.command("reindex")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def reindex_cmd(no_progress: bool) -> None:
    """Rebuild the search index values and sort keys of every stored resource that an upgrade changed (safe
    while the server runs, and to rerun). JSON on stdout: versions checked and rebuilt, by type."""
    from tqdm import tqdm

    from app.cli.common import Timer, node_services, on_terminal, summary
    from app.store.reindex import reindex

    timer = Timer()
    with node_services() as svc, tqdm(unit="doc", desc="ehc reindex", disable=not on_terminal(not no_progress),
                                      mininterval=0.5) as bar:
        report = reindex(svc.repo, on_document=lambda *_: bar.update())
    click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    summary(f"ehc reindex: {report.checked:,} versions checked, {sum(report.rebuilt.values()):,} rebuilt "
            f"({timer.seconds:.1f} s)")


COMMANDS = [reindex_cmd]
