"""`ehc serve`: the server, under gunicorn (gthread workers) by default; `--dev` for Flask's reloader.

Workers and threads: by default one worker process per CPU (at least 2) and 4 threads each: the work of a
request is Python (one CPU per process at a time) with database round trips between, which the threads overlap.
`--workers` and `--threads` override them.

Without EHC_MONGODB_URI it starts the embedded database and stops it again when the server stops (Ctrl-C or
SIGTERM); a database that was already running is left running. Beside the workers it runs the audit sealer in a
process of its own (app.ops.sealer), restarted if it exits.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
from typing import Any

import click

from app.cli.common import PORT, node_services, reach_database

THREADS = 4


def default_workers() -> int:
    return max(2, os.cpu_count() or 1)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=PORT)
@click.option("--workers", default=0, type=click.IntRange(min=0),
              help="gunicorn worker processes (default: one per CPU, at least 2)")
@click.option("--threads", default=THREADS, show_default=True, type=click.IntRange(min=1), help="threads per worker")
@click.option("--dev", is_flag=True, help="Flask's development server with the reloader, one process")
def serve(host: str, port: int, workers: int, threads: int, dev: bool) -> None:
    """Run the FHIR server."""
    from app.config import load_settings

    _check_listen(host, port)
    settings = load_settings()
    owner = os.getpid()  # gunicorn forks its workers from inside this function: only this process stops the database
    uri, started = reach_database(settings)
    if started is not None:
        click.echo(f"ehc: started the embedded database on {uri} (files in {started.data_dir}); "
                   "it stops with the server", err=True)
    try:
        with node_services(settings) as svc:  # recovers journals and makes the keys once, before any worker
            _orientation(svc, host, port)
        if not settings.mongodb_uri:  # the workers connect to the database this process reached
            os.environ["EHC_MONGODB_URI"] = uri.rstrip("/") + "/" + settings.db_name
        workers = workers or default_workers()
        if dev:
            _run_dev(host, port)
        else:
            click.echo(f"ehc: gunicorn, {workers} workers x {threads} threads (gthread) on http://{host}:{port}; "
                       "Ctrl-C stops it", err=True)
            _run_gunicorn(host, port, workers, threads, settings.data_dir)
    finally:
        if started is not None and os.getpid() == owner:
            started.stop()
            click.echo("ehc: stopped the embedded database", err=True)


def _check_listen(host: str, port: int) -> None:
    """Fail at once, in one line, when the address cannot be listened on: gunicorn would otherwise retry for
    five seconds after the database had been started, then stop with its own log lines."""
    from werkzeug.serving import is_running_from_reloader

    if is_running_from_reloader():  # --dev's reloaded process: its parent holds the socket for it
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason = "in use by another process (another `ehc serve`?); stop it, or choose another port with --port"
        else:
            reason = exc.strerror or str(exc)
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None


def _orientation(svc: Any, host: str, port: int) -> None:
    from app.keyring import keys_dir

    settings = svc.settings
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    base = settings.base_url or f"http://{shown}:{port}/fhir"
    echo = lambda text: click.echo(f"ehc: {text}", err=True)  # noqa: E731
    echo(f"FHIR base {base}")
    echo(f"data in {settings.data_dir}; platform keys in {keys_dir(settings)} (back them up: card IDs and "
         "encrypted fields depend on them)")
    clients = svc.handle.db["auth_clients"].find_one({}, {"_id": 1})
    if clients is None and settings.auth_required:
        echo("no OAuth client is registered: every /fhir call but metadata needs a token. Register one with "
             "`ehc clients add --name NAME --scopes \"system/*.cruds\" --province "
             f"{settings.province}`, or run `ehc seed --demo` for a ready demo")


def _run_dev(host: str, port: int) -> None:
    from app import create_app
    from app.ops.devserver import DevRequestHandler

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        create_app().run(host=host, port=port, debug=True, use_reloader=True, threaded=True,
                         request_handler=DevRequestHandler)
    except KeyboardInterrupt:
        pass


def _run_gunicorn(host: str, port: int, workers: int, threads: int, data_dir: Any) -> None:
    from gunicorn.app.base import BaseApplication

    owner = os.getpid()

    metrics_dir = data_dir / "run" / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # read when prometheus_client is imported: after this
    from app.ops.metrics import mark_process_dead
    from app.ops.sealer import SealerProcess
    from app.ops.worker import WORKER_CLASS

    os.environ["EHC_BACKGROUND_SEALING"] = "off"  # the workers: one sealer process seals beside them

    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": WORKER_CLASS,  # gthread, reading raw UTF-8 targets and answering its errors in FHIR
        "http_parser": "python",  # the worker's UTF-8 hook is in gunicorn's Python parser
        "timeout": 120,
        "graceful_timeout": 20,  # workers release their heartbeats at exit (app/store/owners.py): let them
        "accesslog": None,  # the JSON request line of app.ops.logging replaces it (no raw paths in logs)
        "errorlog": "-",
        "loglevel": "warning",
        "child_exit": lambda server, worker: mark_process_dead(worker.pid),
    }

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from app import create_app

            return create_app()

    sys.argv = sys.argv[:1]  # gunicorn reads its own command line too; ours is not for it
    sealer = SealerProcess()
    sealer.start()
    try:
        Server().run()
    finally:
        if os.getpid() == owner:  # not in a worker leaving through this frame
            sealer.stop()
