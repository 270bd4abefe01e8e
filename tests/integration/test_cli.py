"""The `ehc` command as an operator meets it: one clear line when the database is away, `--password-stdin`,
`ehc seed --demo` giving a working client, `ehc status`, the import's forgiving input and clean failures,
`ehc serve` (gunicorn by default) stopping the embedded database it started, and the FerretDB install lock."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from app.audit.spool import segments, spool_dir
from app.cli import main
from app.store.embedded import free_port
from tests.integration.test_mpi_registration import id_number


@pytest.fixture()
def env(settings) -> dict[str, str]:
    return {"EHC_MONGODB_URI": settings.mongodb_uri, "EHC_DATA_DIR": str(settings.data_dir), "EHC_PROVINCE": "11"}


def run(env: dict[str, str], *args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), env=env, input=input)


@pytest.mark.parametrize("args", [["clients", "add", "--name", "x", "--scopes", "system/*.rs", "--province", "11"],
                                  ["audit", "verify"], ["seed", "--demo"], ["status"]])
def test_unreachable_database_is_one_line_naming_the_uri(tmp_path, args):
    uri = f"mongodb://127.0.0.1:{free_port()}/ehc"
    t0 = time.monotonic()
    result = run({"EHC_MONGODB_URI": uri, "EHC_DATA_DIR": str(tmp_path)}, *args)
    assert time.monotonic() - t0 < 4  # a 1 s ping (and the command's imports), not pymongo's 10 s and a traceback
    assert result.exit_code != 0
    text = result.stderr if args != ["status"] else result.stdout
    assert uri in text and "Traceback" not in text
    if args != ["status"]:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_users_add_reads_the_password_from_stdin(env, services):
    from app.auth.accounts import find_account
    from app.auth.plugin import auth_state

    result = run(env, "users", "add", "--phone", "13900139001", "--password-stdin", input="correct horse 1\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["account"]
    st = auth_state(services)
    assert find_account(st.store, st.keys, "13900139001") is not None
    refused = run(env, "users", "add", "--phone", "13900139002")  # no terminal, no --password-stdin
    assert refused.exit_code == 2 and "--password-stdin" in refused.stderr


def test_seed_demo_gives_a_client_that_gets_a_token_and_reads(env, app):
    result = run(env, "seed", "--demo")
    assert result.exit_code == 0, result.output
    demo = json.loads(result.stdout)
    assert "TOKEN=$(curl" in result.stderr and demo["client_id"] in result.stderr
    client = app.test_client()
    r = client.post("/oauth/token", data={"grant_type": "client_credentials", "scope": demo["scopes"]},
                    auth=(demo["client_id"], demo["client_secret"]))
    assert r.status_code == 200, r.json
    headers = {"Authorization": f"Bearer {r.json['access_token']}"}
    everything = client.get(f"/fhir/{demo['patient']}/$everything", headers=headers)
    assert everything.status_code == 200
    types = sorted(e["resource"]["resourceType"] for e in everything.json["entry"])
    assert types.count("Observation") == 3 and "Patient" in types
    again = json.loads(run(env, "seed", "--demo").stdout)
    assert again["patient"] == demo["patient"] and again["client_id"] != demo["client_id"]


def test_status_summarises_the_node(env, services):  # services: the node exists (keys made)
    result = run(env, "status")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["database"]["reachable"] and status["keys"]["platform"]["index"] == "ok"
    assert {"sealed", "pending", "head"} <= set(status["audit"])
    assert isinstance(status["counts"]["Patient"], int) and "journals_pending" in status


def write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_import_accepts_id_type_names_full_systems_and_only_identifying_columns(env, tmp_path):
    src = write(tmp_path / "in.csv", ["source_system", "mrn", "name", "id_type", "id_number", "gender"], [
        ["hosp-cli", "C1", "甘一", "身份证", id_number("110101", "1981-01-01", 11), "男"],
        ["urn:ehc:mrn:hosp-cli", "C2", "甘二", "resident-id", id_number("110101", "1982-02-02", 13), "男"],
        ["hosp-cli", "C3", "Smith John", "passport", "E12345678", "male"],
        ["hosp-cli", "C4", "甘四", "01", id_number("110101", "1984-04-04", 15), "男"],
        ["hosp-cli", "C5", "甘五", "railway-card", "X1", "男"],
    ])
    result = run(env, "import", str(src), "--report", str(tmp_path / "report.csv"))
    assert result.exit_code == 0, result.output
    with open(tmp_path / "report.csv", encoding="utf-8") as fh:
        report = list(csv.DictReader(fh))
    assert [r["outcome"] for r in report] == ["created"] * 4 + ["rejected"], report
    assert "railway-card" in report[4]["reason"]
    assert "ehc import: 5 rows" in result.stderr and "4 created" in result.stderr


def test_import_failures_are_one_line_and_leave_nothing(env, tmp_path):
    src = write(tmp_path / "bad.csv", ["mrn", "name"], [["C1", "甘一"]])
    report = tmp_path / "report.csv"
    result = run(env, "import", str(src), "--report", str(report))
    assert result.exit_code == 1 and "source_system" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not report.exists()
    good = write(tmp_path / "good.csv", ["source_system", "mrn", "name"], [["hosp-cli", "C9", "甘九"]])
    missing = run(env, "import", str(good), "--report", str(tmp_path / "no" / "such" / "r.csv"))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_install_waits_for_a_build_in_progress(tmp_path):
    import fcntl

    from app.store.embedded import install_ferretdb

    target = tmp_path / "bin" / "ferretdb"
    target.parent.mkdir()
    result: list[Path] = []
    with open(target.parent / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is building
        waiter = threading.Thread(target=lambda: result.append(install_ferretdb(target)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not result
        target.write_text("built by the other process")
    waiter.join(10)
    assert result == [target] and target.read_text() == "built by the other process"
    assert not list(target.parent.glob("*.partial"))


def test_install_removes_what_a_killed_build_left(tmp_path, monkeypatch):
    from app.store import embedded

    target = tmp_path / "bin" / "ferretdb"
    target.parent.mkdir()
    stale = target.parent / "ferretdb-k1ll3d.partial"  # a build killed (SIGTERM) before its cleanup ran
    stale.write_bytes(b"\0" * 1024)

    def build(into: Path) -> Path:
        assert not stale.exists()  # gone before the new build starts
        into.write_text("built")
        return into

    monkeypatch.setattr(embedded, "_build_ferretdb", build)
    assert embedded.install_ferretdb(target) == target
    assert target.read_text() == "built" and not list(target.parent.glob("*.partial"))


def _children(parent: int) -> dict[int, list[bytes]]:
    """pid -> command line of the processes whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
    return found


def _sealer_of(parent: int) -> int | None:
    """The pid of the `ehc audit seal --follow` child of `parent`, if one runs."""
    return next((pid for pid, cmd in _children(parent).items() if b"--follow" in cmd), None)


def _sealed_soon(db_port: int, above: int, within: float = 10.0) -> int:
    """The audit chain's head on the embedded database, once it is above `above` (or after `within` s)."""
    from pymongo import MongoClient

    client: MongoClient = MongoClient(f"mongodb://127.0.0.1:{db_port}", serverSelectionTimeoutMS=2000)
    try:
        deadline = time.monotonic() + within
        while True:
            head = int((client["ehc"]["_audit_state"].find_one({"_id": "audit-head"}) or {}).get("seq") or 0)
            if head > above or time.monotonic() > deadline:
                return head
            time.sleep(0.2)
    finally:
        client.close()


@pytest.mark.parametrize("args, option", [
    (["serve", "--port", "70000"], "--port"), (["serve", "--port", "0"], "--port"),
    (["serve", "--threads", "0"], "--threads"), (["serve", "--workers", "-1"], "--workers"),
    (["db", "start", "--port", "70000"], "--port"), (["db", "status", "--port", "0"], "--port"),
    (["import", "{csv}", "--report", "{report}", "--workers", "0"], "--workers"),
    (["seed", "--patients", "-5"], "--patients"), (["seed", "--observations", "-1"], "--observations"),
    (["seed", "--start", "-3"], "--start"), (["seed", "--max-seconds", "-1"], "--max-seconds"),
])
def test_impossible_numbers_are_refused_before_anything_starts(tmp_path, args, option):
    """Each used to be taken: serve on port 0 listened on a port nobody was told of, --threads 0 failed in the
    workers, port 70000 ended in a traceback, negative counts seeded nothing without a word."""
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("source_system,mrn,name\nh,1,张三\n", encoding="utf-8")
    args = [a.format(csv=csv_file, report=tmp_path / "report.csv") for a in args]
    env = {"EHC_DATA_DIR": str(tmp_path), "EHC_DB_PORT": str(free_port()), "EHC_MONGODB_URI": ""}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
    assert not (tmp_path / "db").exists() and not (tmp_path / "report.csv").exists()


def test_serve_on_a_port_in_use_says_so_before_starting_anything(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "EHC_MONGODB_URI"}
        env.update(EHC_DATA_DIR=str(tmp_path), EHC_DB_PORT=str(free_port()))
        done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: in use by another process" in done.stderr
    assert "--port" in done.stderr and "Traceback" not in done.stderr
    assert "started the embedded database" not in done.stderr and not (tmp_path / "db").exists()


@pytest.mark.slow
def test_serve_runs_gunicorn_and_stops_the_embedded_database_it_started(tmp_path):
    port, db_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "EHC_MONGODB_URI"}
    env.update(EHC_DATA_DIR=str(tmp_path), EHC_DB_PORT=str(db_port))
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "2",
                             "--threads", "2"], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            pytest.fail("the server did not become ready")
        assert requests.get(f"http://127.0.0.1:{port}/fhir/Patient", timeout=5).status_code == 401
        # the workers do not seal in the background: the sealer process does, and it is restarted when killed
        sealer = _sealer_of(proc.pid)
        assert sealer is not None
        head = _sealed_soon(db_port, above=0)  # the 401's event
        assert head >= 1
        os.kill(sealer, signal.SIGSTOP)  # the sealer paused: nobody seals the next event in the background
        assert requests.get(f"http://127.0.0.1:{port}/fhir/Patient", timeout=5).status_code == 401
        assert _sealed_soon(db_port, above=head, within=3.0) == head
        os.kill(sealer, signal.SIGKILL)  # then killed: a new one starts and seals it
        assert _sealed_soon(db_port, above=head, within=15.0) == head + 1
        assert _sealer_of(proc.pid) not in (None, sealer)
        pid_file = tmp_path / "db" / "db.pid"
        db_pid = int(pid_file.read_text())
        for _ in range(20):  # records still in the workers' spools when the stop comes
            assert requests.get(f"http://127.0.0.1:{port}/fhir/Patient", timeout=5).status_code == 401
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"platform keys in {tmp_path / 'keys'}" in err
    assert "no OAuth client is registered" in err and "ehc clients add" in err
    assert "gthread" in err and "stopped the embedded database" in err
    assert "WARNING: This is a development server" not in err
    with pytest.raises(ProcessLookupError):
        os.kill(db_pid, 0)
    # the audit records were spooled by the workers, and shipped when they stopped (SIGTERM: gracefully)
    spool = spool_dir(tmp_path, "ehc")
    assert spool.exists() and segments(spool) == []


@pytest.mark.slow
def test_ctrl_c_stops_serve_with_every_exit_hook_run(tmp_path, db_uri):
    """Ctrl-C sends SIGINT to the whole process group, and the arbiter then sends its workers SIGQUIT too: the
    workers still ship their spooled audit records and remove their heartbeats (app/ops/worker.py)."""
    from tests.live import EhcServe

    server = EhcServe(tmp_path, db_uri).start()
    try:
        for _ in range(20):  # records in the workers' spools when Ctrl-C comes
            assert requests.get(f"{server.root}/fhir/Patient", timeout=5).status_code == 401
        assert server.proc is not None
        os.killpg(server.proc.pid, signal.SIGINT)
        server.proc.wait(30)
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log
    assert "could not remove the heartbeat" not in log
    assert segments(spool_dir(tmp_path, db_uri.rsplit("/", 1)[-1])) == []


@pytest.mark.slow
def test_serve_dev_answers_from_behind_its_reloader(tmp_path, db_uri):
    """`--dev`: werkzeug's reloader holds the socket and runs the app in a child process, which must not take
    the held port for one in use (app/cli/serve.py)."""
    port = free_port()
    env = dict(os.environ, EHC_MONGODB_URI=db_uri, EHC_DATA_DIR=str(tmp_path))
    log = tmp_path / "dev.log"
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--dev", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status != 200 and proc.poll() is None:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2).status_code
            except requests.RequestException:
                time.sleep(0.3)
        assert status == 200, log.read_text()[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
