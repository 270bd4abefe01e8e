"""`ehc keys list|rotate`: the node's SM2 signing keys for QR tokens (docs/terminal-vendors.md)."""

from __future__ import annotations

import json
import time

import click


def _keys():  # type: ignore[no-untyped-def]
    from app.config import load_settings
    from app.ehc.signing import SigningKeys, signing_keys_path
    from app.keyring import keys_dir

    settings = load_settings()
    return SigningKeys(signing_keys_path(keys_dir(settings)), settings.province)


@click.group()
def keys() -> None:
    """SM2 signing keys: the current one signs; retired ones verify until their exp."""


@keys.command("list")
def list_keys() -> None:
    """Every key with its kid, validity and state (JSON lines; never the private part)."""
    store = _keys()
    now = int(time.time())
    current = store.current(now)
    for key in sorted(store.all(), key=lambda k: k.nbf):
        state = "current" if key.kid == current.kid else ("retired" if key.exp > now else "expired")
        click.echo(json.dumps({**key.jwk(), "state": state, "retired": key.retired}))


@keys.command()
def rotate() -> None:
    """Make a new current key; the old one stays published until what it signed has expired."""
    from app.cli.common import summary

    store = _keys()
    old = store.current(int(time.time())).kid
    new = store.rotate()
    click.echo(json.dumps({"rotated": True, "kid": new.kid, "nbf": new.nbf, "exp": new.exp}))
    summary(f"ehc keys rotate: {new.kid} signs from now on; {old} keeps verifying what it signed until it expires "
            f"(it stays listed at /ehc/keys); running servers see the change at their next signing.")


COMMANDS = [keys]
