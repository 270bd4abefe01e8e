"""Shared fixtures. Tests talk to a real database server over the wire: EHC_MONGODB_URI when set,
otherwise one embedded FerretDB per test process on a free 127.0.0.1 port. Each test module gets its
own database."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.store.embedded import EmbeddedDatabase, free_port


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URI of a real MongoDB-compatible server (no database name)."""
    uri = os.environ.get("EHC_MONGODB_URI")
    if uri:
        yield uri.rsplit("/", 1)[0] + "/" if uri.count("/") > 2 else uri
        return
    db = EmbeddedDatabase(tmp_path_factory.mktemp("db"), free_port())
    db.start()
    try:
        yield db.uri
    finally:
        db.stop(timeout=2)


@pytest.fixture(scope="module")
def db_uri(mongo_server: str, request: pytest.FixtureRequest) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    name = re.sub(r"[^a-zA-Z0-9]", "_", f"t_{worker}_{request.module.__name__.split('.')[-1]}")[:60]
    from pymongo import MongoClient

    client: MongoClient = MongoClient(mongo_server)
    client.drop_database(name)
    client.close()
    return mongo_server.rstrip("/") + "/" + name


@pytest.fixture(scope="module")
def settings(db_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(mongodb_uri=db_uri, province="11", base_url=None, data_dir=tmp_path_factory.mktemp("data"),
                    auth_required=False, max_body_bytes=1024 * 1024)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Any:
    from app import create_app

    flask_app = create_app(settings)
    flask_app.testing = True
    yield flask_app
    flask_app.extensions["ehc"].handle.close()


@pytest.fixture()
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="module")
def services(app: Any) -> Any:
    return app.extensions["ehc"]


SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> dict[str, Any]:
    import json

    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))
