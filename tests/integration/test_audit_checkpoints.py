"""Signed checkpoints of the audit chain head (issue #7, finding 20): kept in EHC_DATA_DIR (0600) and published
at /ehc/audit/checkpoints, they let `ehc audit verify` name a chain cut short or rewritten and a forged
checkpoint; verify also names an edited patient index (the `ix` values and the posting lists that
`AuditEvent?patient=` reads)."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.audit import build_trail, chain_name
from app.audit.chain import CHAIN, EVENTS, HEAD_ID, STATE, CheckpointCheck, IndexCheck, digest, key, link, verify
from app.audit.checkpoints import FILE_NAME, Checkpoint, parse_lines, public_key_from_jwk, sign
from app.core.access import AccessRecord, Principal
from app.crypto import SM2PrivateKey
from app.ehc.signing import SigningKeys
from tests.sealing import seal_everything


@pytest.fixture()
def node(mongo_server, tmp_path):
    """Services on a database of their own, with a data directory and signing keys of their own."""
    from app.config import Settings
    from app.services import build_services

    uri = mongo_server.rstrip("/") + "/t_audit_cp_" + uuid.uuid4().hex[:8]
    svc = build_services(Settings(mongodb_uri=uri, province="11", data_dir=tmp_path, auth_required=False))
    keys = SigningKeys(tmp_path / "keys" / "signing-keys.json", "11")
    yield svc, keys
    svc.handle.client.drop_database(svc.handle.db.name)
    svc.handle.close()


def fill(svc: Any, keys: Any, n: int, patients: bool = False) -> Any:
    writer, sealer = build_trail(svc, keys=keys, checkpoint_interval=0.0)
    for i in range(n):
        writer.write(AccessRecord("read", "Patient", [f"p{i % 3}"] if patients else [],
                                  principal=Principal(client_id="c")))
    seal_everything(sealer)
    return sealer


def check(svc: Any, keys: Any, path: Path | None = None) -> CheckpointCheck:
    path = path or svc.settings.data_dir / FILE_NAME
    lines = parse_lines(path.read_text()) if path.exists() else []

    def public_key(kid: str) -> Any:
        k = keys.get(kid)
        return k.public if k else None

    return CheckpointCheck(lines, chain_name(svc), public_key)


def index(svc: Any) -> IndexCheck:
    repo = svc.repo
    return IndexCheck(lambda d: repo.build_doc(EVENTS, d["_id"], d["vid"], d["ts"], d["res"], d["prov"]),
                      repo.keyed_codes(EVENTS))


def truncate(db: Any, to: int) -> None:
    """What someone with database access does to hide the newest events: remove them and move the head back."""
    top = db[STATE].find_one({"_id": HEAD_ID})["seq"]
    for n in range(to + 1, top + 1):
        entry = db[CHAIN].find_one({"_id": key(n)})
        db[EVENTS].delete_one({"_id": entry["ev"]})
        db[CHAIN].delete_one({"_id": key(n)})
    db[STATE].update_one({"_id": HEAD_ID}, {"$set": {"seq": to, "h": db[CHAIN].find_one({"_id": key(to)})["h"]}})


def test_checkpoints_are_signed_appended_and_private(node):
    svc, keys = node
    fill(svc, keys, 3)
    path = svc.settings.data_dir / FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fill(svc, keys, 2)
    lines = parse_lines(path.read_text())
    assert [ln.checkpoint.seq for ln in lines] == [3, 5]
    newest = lines[-1].checkpoint
    assert newest.chain == chain_name(svc) and newest.kid == keys.current().kid
    assert newest.head == svc.handle.db[CHAIN].find_one({"_id": key(5)})["h"]
    assert newest.verify(keys.current().public)
    report = verify(svc.handle.db, checkpoints=check(svc, keys))
    assert report.ok and report.checkpoints == 2 and report.last_checkpoint["seq"] == 5


def test_truncation_of_the_newest_events_is_named(node):
    svc, keys = node
    fill(svc, keys, 6)
    db = svc.handle.db
    truncate(db, 4)
    assert verify(db).ok  # the chain alone cannot tell: what is left is a valid chain
    report = verify(db, checkpoints=check(svc, keys))
    assert not report.ok
    assert (report.first.kind, report.first.seq) == ("truncated", 5)
    assert "ends at event 4" in report.first.detail and "signed event 6" in report.first.detail


def test_a_rewritten_chain_is_named(node):
    svc, keys = node
    fill(svc, keys, 5)
    db = svc.handle.db
    # edit event 2 and recompute every later digest and link, as someone with database access could
    ev = db[EVENTS].find_one({"_id": db[CHAIN].find_one({"_id": key(2)})["ev"]})
    db[EVENTS].update_one({"_id": ev["_id"]}, {"$set": {"res.outcome": "4"}})
    prev = bytes.fromhex(db[CHAIN].find_one({"_id": key(1)})["h"])
    for n in range(2, 6):
        entry = db[CHAIN].find_one({"_id": key(n)})
        d = digest(db[EVENTS].find_one({"_id": entry["ev"]}))
        prev = link(prev, d)
        db[CHAIN].update_one({"_id": key(n)}, {"$set": {"d": d.hex(), "h": prev.hex()}})
    db[STATE].update_one({"_id": HEAD_ID}, {"$set": {"h": prev.hex()}})
    assert verify(db).ok
    report = verify(db, checkpoints=check(svc, keys))
    assert [(p.kind, p.seq) for p in report.problems] == [("rewritten", 5)]


def test_a_forged_or_altered_checkpoint_is_named(node):
    svc, keys = node
    fill(svc, keys, 3)
    path = svc.settings.data_dir / FILE_NAME
    real = parse_lines(path.read_text())[-1].checkpoint
    impostor = type("K", (), {"kid": real.kid, "private": SM2PrivateKey.generate()})()
    forged = sign(impostor, real.chain, 99, "ab" * 32)  # claims a longer chain, under the node's key id
    altered = Checkpoint(real.chain, 2, real.head, real.time, real.kid, real.sig)  # seq changed after signing
    with path.open("a") as f:
        f.write(json.dumps(forged.to_json()) + "\n" + json.dumps(altered.to_json()) + "\nnot json\n")
    report = verify(svc.handle.db, checkpoints=check(svc, keys))
    kinds = [(p.kind, p.seq) for p in report.problems]
    assert ("checkpoint", 99) in kinds and ("checkpoint", 2) in kinds
    assert not any(k == "truncated" for k, _ in kinds)  # a forged checkpoint is not believed
    assert any("line 4 is not a checkpoint" in p.detail for p in report.problems)
    assert all("bad signature" in p.detail for p in report.problems if p.seq in (2, 99))


def test_an_edited_patient_index_is_named(node):
    svc, keys = node
    fill(svc, keys, 6, patients=True)
    db = svc.handle.db
    assert verify(db, index=index(svc)).ok
    first = db[CHAIN].find_one({"_id": key(1)})["ev"]
    second = db[CHAIN].find_one({"_id": key(2)})["ev"]
    # 1. the event's index values no longer name its patient (the resident's search would not find it)
    kept = db[EVENTS].find_one({"_id": first})["ix"]["patient"]
    db[EVENTS].update_one({"_id": first}, {"$set": {"ix.patient": []}})
    report = verify(db, index=index(svc))
    assert [(p.kind, p.seq) for p in report.problems] == [("index", 1)]
    assert "patient index" in report.first.detail
    assert verify(db).ok  # the hash chain alone does not cover the index
    db[EVENTS].update_one({"_id": first}, {"$set": {"ix.patient": kept}})
    assert verify(db, index=index(svc)).ok
    # 2. the event is taken out of its patient's posting list
    db["_keys"].update_one({"_id": "AuditEvent|r|Patient/p1"}, {"$pull": {"ids": second}})
    report = verify(db, index=index(svc))
    assert [(p.kind, p.seq) for p in report.problems] == [("index", 2)]
    assert "missing from the patient index of Patient/p1" in report.first.detail
    # 3. and listed under someone else
    db["_keys"].update_one({"_id": "AuditEvent|r|Patient/p2"}, {"$addToSet": {"ids": second}})
    details = [p.detail for p in verify(db, index=index(svc)).problems]
    assert any("listed in the patient index of Patient/p2" in d for d in details)


def test_cli_verify_reports_truncation(mongo_server, tmp_path):
    from app.cli import main
    from app.config import Settings
    from app.services import build_services

    uri = mongo_server.rstrip("/") + "/t_audit_cli_" + uuid.uuid4().hex[:8]
    env = {"EHC_MONGODB_URI": uri, "EHC_PROVINCE": "11", "EHC_DATA_DIR": str(tmp_path)}
    svc = build_services(Settings(mongodb_uri=uri, province="11", data_dir=tmp_path))
    try:
        writer, _ = build_trail(svc)
        for i in range(4):
            writer.write(AccessRecord("read", "Patient", [f"p{i}"]))
        r = CliRunner().invoke(main, ["audit", "verify"], env=env)  # seals, writes the first checkpoint
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["sealed"] == 4 and out["checkpoints"] == 1 and out["index_checked"]
        truncate(svc.handle.db, 2)
        r = CliRunner().invoke(main, ["audit", "verify"], env=env)
        assert r.exit_code == 1
        assert json.loads(r.stdout)["first_bad"].startswith("event 3: truncated: the chain ends at event 2")
        # offline, with a saved copy of the published keys instead of the node's key file
        keys = SigningKeys(tmp_path / "keys" / "signing-keys.json", "11")
        (tmp_path / "keys.json").write_text(json.dumps({"keys": keys.published()}))
        r = CliRunner().invoke(main, ["audit", "verify", "--no-seal", "--keys", str(tmp_path / "keys.json")], env=env)
        assert r.exit_code == 1 and "truncated" in json.loads(r.stdout)["first_bad"]
    finally:
        svc.handle.client.drop_database(svc.handle.db.name)
        svc.handle.close()


def test_published_checkpoints_verify_offline_with_the_published_keys(app, services):
    client = app.test_client()
    client.get("/fhir/Patient/nobody")  # an event
    seal_everything(services.extensions["audit"].sealer)
    body = client.get("/ehc/audit/checkpoints").json
    assert body["chain"] == chain_name(services) and body["checkpoints"]
    jwks = {k["kid"]: public_key_from_jwk(k) for k in client.get("/ehc/keys").json["keys"]}
    newest = Checkpoint.from_json(body["checkpoints"][-1])
    assert newest.verify(jwks[newest.kid])
    entry = services.handle.db[CHAIN].find_one({"_id": key(newest.seq)})
    assert entry["h"] == newest.head
    assert client.get(f"/ehc/audit/checkpoints?after={newest.seq}").json["checkpoints"] == []
    r = client.get("/ehc/audit/checkpoints?after=x")
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["after"]
