"""Every shell example of README.md and docs/*.md, run in order against a live `ehc serve` (auth on) on a
private database, as a reader would paste them. Conventions: tests/docs_examples.py and docs/architecture.md
("Writing docs")."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from pymongo import MongoClient

from app.store.embedded import EmbeddedDatabase, free_port
from tests.docs_examples import ROOT, Block, Session, blocks, describe, doc_files, ehc_shim
from tests.live import EhcServe


@pytest.fixture(scope="module")
def doc_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("docs")
    db = shared = None
    if os.environ.get("EHC_MONGODB_URI"):
        # a database of its own, dropped afterwards: one left by an earlier run holds values sealed with that
        # run's keys
        shared = re.sub(r"/[^/]*$", "/", os.environ["EHC_MONGODB_URI"].split("?")[0])
        name = f"doc_examples_{uuid.uuid4().hex[:8]}"
        uri = shared + name
    else:
        db = EmbeddedDatabase(base / "db", free_port())
        db.start()
        uri = db.uri + "doc_examples"
    server = EhcServe(base / "data", uri).start()
    try:
        yield server
    finally:
        server.stop()
        if db is not None:
            db.stop(timeout=5)
        if shared is not None:
            with MongoClient(shared) as client:
                client.drop_database(name)


def test_every_shell_example_in_the_docs_works(doc_server, tmp_path):
    env = dict(doc_server.env)
    env["PATH"] = f"{ehc_shim(tmp_path / 'bin')}:{env['PATH']}"
    env["PYTHONPATH"] = str(ROOT)  # `ehc` in the examples is this checkout's
    readme = Session(env, doc_server.root, tmp_path / "README")
    failures: list[str] = []
    ran = 0
    for path in doc_files():
        # every docs/*.md starts where the README's quick start left the reader (its $TOKEN, $B, $H ...)
        session = readme if path.name == "README.md" else readme.fork()
        for block in blocks(path):
            result = session.run(block)
            ran += result.ran
            if result.ran and not result.ok:
                failures.append(describe(result))
                break
        if failures and path.name == "README.md":
            break  # the other files build on it
    assert not failures, "\n\n".join(failures)
    assert ran >= 10


def test_the_conventions_of_examples(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("\n".join([
        "```sh", "A=1", "```",
        "```python", "print('not run')", "```",
        "<!-- doc-test: file hello.sh -->", "```sh", "echo hello from a file", "```",
        "```sh", "# doc-test: skip needs a docker engine", "docker compose up -d", "```",
        "<!-- doc-test: skip needs a browser -->", "```bash", "open https://example.cn", "```",
        "```console", "echo $A; sh hello.sh", "test \"$A\" = 1", "```",
    ]) + "\n", encoding="utf-8")
    found = blocks(doc)
    assert [(b.lang, b.skip, b.file) for b in found] == [
        ("sh", None, None), ("sh", None, "hello.sh"), ("sh", "needs a docker engine", None),
        ("bash", "needs a browser", None), ("console", None, None)]
    (tmp_path / "work").mkdir()
    session = Session(dict(os.environ), None, workdir=tmp_path / "work")
    results = [session.run(b) for b in found]
    assert [(r.ran, r.ok) for r in results] == [(True, True), (False, True), (False, True), (False, True),
                                                (True, True)]
    assert results[-1].stdout == "1\nhello from a file\n"


def test_a_failing_example_names_its_file_and_line(tmp_path):
    doc = tmp_path / "y.md"
    doc.write_text("text\n\n```sh\nB=1\nfalse\n```\n", encoding="utf-8")
    (tmp_path / "work").mkdir()
    block: Block = blocks(doc)[0]
    result = Session(dict(os.environ), None, workdir=tmp_path / "work").run(block)
    assert not result.ok and "failed at line" in result.stderr
    assert describe(result).startswith(f"{doc}:3: the example failed")


def test_every_doc_file_is_picked_up():
    names = [p.relative_to(ROOT).as_posix() for p in doc_files()]
    assert names[0] == "README.md"
    assert sorted(names[1:]) == sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert Path(ROOT / "docs" / "architecture.md") in doc_files()
