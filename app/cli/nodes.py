"""`ehc nodes add|list|remove|key`: the federation's trust, set up by the operator (docs/federation.md).

    ehc nodes add --province NN --url BASE [--fingerprint FP]   trust the node at BASE (its FHIR base; for
                                                                --province 00, EHC_NATIONAL_URL by default)
    ehc nodes list                                              the trusted nodes, with key fingerprints
    ehc nodes remove --province NN                              stop trusting it (its tokens stop within a second)
    ehc nodes key                                               this node's own province, role and fingerprint

`add` fetches the other node's public key from BASE/../federation/node and prints its fingerprint: the operator
compares it with what `ehc nodes key` prints on that node (or passes --fingerprint to have it checked).
"""

from __future__ import annotations

import json
import sys

import click


def _services():  # type: ignore[no-untyped-def]
    from app.config import load_settings
    from app.services import build_services

    return build_services(load_settings())


@click.group()
def nodes() -> None:
    """Federation: the national node and the province nodes this node trusts."""


@nodes.command("add")
@click.option("--province", required=True, help="the other node's GB/T 2260 code (00: the national node)")
@click.option("--url", default=None, help="the other node's FHIR base, e.g. https://ehc.sh.example.cn/fhir "
                                         "(for --province 00 on a province node: EHC_NATIONAL_URL by default)")
@click.option("--fingerprint", default=None, help="refuse unless the other node's key has this fingerprint")
def add(province: str, url: str | None, fingerprint: str | None) -> None:
    """Trust another node: fetch its key, register it as the OAuth client node-NN."""
    from app.federation.peers import PeerUnreachable, http
    from app.federation.plugin import registry_for
    from app.federation.registry import NATIONAL, NodeError, fhir_root

    svc = _services()
    try:
        national_url = svc.settings.national_url
        if province == NATIONAL and national_url:
            if url and url.rstrip("/") != national_url:
                raise NodeError(f"EHC_NATIONAL_URL is {national_url} but --url is {url}; they must agree")
            url = url or national_url
        if not url:
            raise NodeError("--url is required (the other node's FHIR base)")
        registry = registry_for(svc)
        registry.check_peer(province, url)
        try:
            status, info = http("GET", f"{fhir_root(url)}/federation/node", timeout=10.0, province=province)
        except PeerUnreachable as err:
            raise NodeError(f"cannot reach {url}: {err.reason}") from None
        if status != 200 or not isinstance(info, dict):
            raise NodeError(f"{url} is not an ehc node (GET /federation/node answered {status})")
        node = registry.add(province, url, info, fingerprint)
        if province == NATIONAL:  # the residents registered before: their index entries are owed too
            from app.federation.outbox import Outbox

            ids = [d["_id"] for d in svc.repo.current("Patient").find({"del": {"$ne": True}}, {"_id": 1})]
            Outbox(svc.repo.db).enqueue_all(ids)
    except ValueError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    finally:
        svc.handle.close()
    click.echo(json.dumps({**node.to_json(), "check": "compare the fingerprint with `ehc nodes key` run on "
                                                      "that node"}, ensure_ascii=False, indent=2))


@nodes.command("list")
def list_nodes() -> None:
    """The trusted nodes (JSON lines: province, url, fingerprint, added, client_id)."""
    from app.federation.plugin import registry_for

    svc = _services()
    try:
        for node in sorted(registry_for(svc).nodes().values(), key=lambda n: n.province):
            click.echo(json.dumps(node.to_json(), ensure_ascii=False))
    finally:
        svc.handle.close()


@nodes.command("remove")
@click.option("--province", required=True)
def remove(province: str) -> None:
    """Stop trusting a node."""
    from app.federation.plugin import registry_for

    svc = _services()
    try:
        removed = registry_for(svc).remove(province)
    finally:
        svc.handle.close()
    if not removed:
        click.echo(f"error: no node of province {province} is registered", err=True)
        sys.exit(1)
    click.echo(f"removed node {province}")


@nodes.command("key")
def key() -> None:
    """This node's province, role and key fingerprint (what the other side compares)."""
    from app.config import load_settings
    from app.federation.keys import NodeKey

    settings = load_settings()
    k = NodeKey(settings.data_dir)
    click.echo(json.dumps({"province": settings.province,
                           "role": "national" if settings.province == "00" else "province",
                           "fingerprint": k.fingerprint()}, ensure_ascii=False))


COMMANDS = [nodes]
