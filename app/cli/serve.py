"""`ehc serve`: the server. Starts the embedded database when EHC_MONGODB_URI is unset."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=0, type=int, help="gunicorn workers (0: the single-process dev server)")
def serve(host: str, port: int, workers: int) -> None:
    """Run the FHIR server."""
    from app import create_app
    from app.config import load_settings
    from app.services import build_services

    settings = load_settings()
    services = build_services(settings)  # starts the embedded database and recovers journals once
    if workers <= 0:
        app = create_app(settings, services=services)
        click.echo(f"ehc: FHIR base http://{host}:{port}/fhir (database {services.handle.client.address})")
        app.run(host=host, port=port, threaded=True)
        return
    import os
    import subprocess
    import sys

    uri = settings.mongodb_uri or f"mongodb://127.0.0.1:{settings.embedded_port}/"
    env = dict(os.environ, EHC_MONGODB_URI=uri if settings.mongodb_uri else uri + settings.db_name)
    cmd = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"{host}:{port}", "app.wsgi:app"]
    raise SystemExit(subprocess.call(cmd, env=env))
