"""Finding 30 over HTTP (deeply nested JSON: 400, no traceback in the log) and finding 28 (the data directory
0700, the embedded database's files and the key files 0600, also when an older version left them 0644)."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

from app.config import Settings
from app.store.embedded import EmbeddedDatabase, free_port

FJ = "application/fhir+json"


def deep(levels: int) -> str:
    return '{"resourceType": "Patient", "extension": [' + '{"url": "http://e.cn/x", "extension": [' * levels \
        + '{"url": "http://e.cn/x", "valueString": "v"}' + "]}" * levels + "]}"


def test_deep_json_is_400_without_traceback(client, caplog):
    pid = client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient"}), content_type=FJ).json["id"]
    deep_patch = json.dumps([{"op": "add", "path": "/extension", "value": json.loads(deep(200))}])
    bundle = '{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": ' + deep(200) \
        + ', "request": {"method": "POST", "url": "Patient"}}]}'
    with caplog.at_level(logging.WARNING):
        answers = [
            client.post("/fhir/Patient", data=deep(200), content_type=FJ),  # 400 levels, finding 30
            client.post("/fhir/Patient", data='{"resourceType": "Patient", "extension": ' + "[" * 100_000
                        + "]" * 100_000 + "}", content_type=FJ),  # beyond the parser's own recursion limit
            client.put(f"/fhir/Patient/{pid}", data=deep(200), content_type=FJ),
            client.post("/fhir", data=bundle, content_type=FJ),
            client.patch(f"/fhir/Patient/{pid}", data=deep_patch, content_type="application/json-patch+json"),
        ]
    for r in answers:
        assert r.status_code == 400, (r.status_code, r.get_data(as_text=True)[:300])
        assert r.json["resourceType"] == "OperationOutcome"
        assert "nested more than 100 levels" in r.json["issue"][0]["diagnostics"]
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR], \
        [rec.getMessage()[:200] for rec in caplog.records]
    # a resource at a sensible depth still works
    ok = client.post("/fhir/Patient", data=deep(10), content_type=FJ)
    assert ok.status_code == 201, ok.json


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_directory_database_and_keys_are_private(tmp_path):
    """Start-up with the embedded database in a fresh data directory (and one file an older version left
    0644): every folder is 0700, every file 0600."""
    from app import create_app

    data = tmp_path / "ehc-data"
    (data / "keys").mkdir(parents=True)
    (data / "keys" / "index.key").write_bytes(b"k" * 32)
    (data / "keys" / "index.key").chmod(0o644)
    data.chmod(0o755)
    settings = Settings(mongodb_uri=None, embedded_port=free_port(), data_dir=data, auth_required=True)
    app = create_app(settings)
    svc = app.extensions["ehc"]
    try:
        svc.handle.db["probe"].insert_one({"_id": "x"})  # the database writes its files
        client = app.test_client()
        client.get("/oauth/jwks")  # the OpenID signing key
        client.get("/ehc/keys")  # the card signing keys
    finally:
        svc.handle.close()
        EmbeddedDatabase(data / "db", settings.embedded_port).stop(timeout=2)
    files = [p for p in data.rglob("*") if p.is_file() and not p.is_symlink()]
    folders = [data, *(p for p in data.rglob("*") if p.is_dir())]
    names = {p.relative_to(data).as_posix() for p in files}
    assert {"keys/index.key", "keys/card-root.key", "keys/field.key", "auth/secret.key"} <= names, names
    assert any(n.startswith("db/ferretdb/") and n.endswith(".sqlite") for n in names) or \
        any(n.startswith("db/mongod/") for n in names), names
    assert {str(p.relative_to(data)): oct(mode(p)) for p in folders if mode(p) != 0o700} == {}
    assert {str(p.relative_to(data)): oct(mode(p)) for p in files if mode(p) & 0o077} == {}


def test_embedded_database_runs_with_our_go_collector_settings_unless_told_otherwise(tmp_path, monkeypatch):
    """The embedded FerretDB starts with GOGC=400 (less of its CPU spent collecting garbage) and a 512 MiB soft
    memory limit; an operator's own GOGC in the environment wins."""
    monkeypatch.setenv("GOGC", "250")
    db = EmbeddedDatabase(tmp_path / "db", free_port())
    pid = db.start()
    try:
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
    finally:
        db.stop(timeout=5)
    assert environ["GOGC"] == "250"
    assert environ["GOMEMLIMIT"] == "512MiB"
