"""`ehc clients add`: register an OAuth client. Prints JSON with client_id and, for confidential clients
without a JWKS, client_secret (shown once; only its hash is stored)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.group()
def clients() -> None:
    """OAuth / SMART clients."""


@clients.command("add")
@click.option("--name", required=True, help="shown to residents on the approval page")
@click.option("--scopes", required=True, help='space-separated SMART scopes, e.g. "system/Patient.rs"')
@click.option("--province", required=True, help="GB/T 2260 two-digit province code (00: national)")
@click.option("--organization", "organization", default=None, metavar="ORG_ID", help="Organization resource id")
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="public JWK Set (RS384 / ES384) for private_key_jwt")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="for apps (authorization code)")
@click.option("--public", is_flag=True, help="a public app (PKCE, no secret)")
@click.option("--break-glass", is_flag=True, help="may read without consent with purpose of use ETREAT")
@click.option("--resource-server", is_flag=True, help="may introspect the tokens of other clients")
def add(name: str, scopes: str, province: str, organization: str | None, jwks_file: Path | None,
        redirect_uris: tuple[str, ...], public: bool, break_glass: bool, resource_server: bool) -> None:
    """Register a client."""
    from app.cli.common import node_services

    jwks = json.loads(jwks_file.read_text(encoding="utf-8")) if jwks_file else None
    with node_services() as svc:
        from app.auth.plugin import auth_state
        from app.auth.registration import register_client

        try:
            if organization and not svc.repo.exists("Organization", organization):
                click.echo(f"warning: Organization/{organization} does not exist (yet)", err=True)
            out = register_client(auth_state(svc).store, name=name, scopes=scopes, province=province,
                                  organization=organization, jwks=jwks, redirect_uris=list(redirect_uris),
                                  public=public, break_glass=break_glass, resource_server=resource_server)
        except ValueError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
    click.echo(json.dumps(out, ensure_ascii=False, indent=2))


COMMANDS = [clients]
