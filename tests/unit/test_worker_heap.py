"""`ehc serve`'s worker settles its heap once the application is loaded (app/ops/worker.py): start-up objects
frozen out of the collector's scans, young collections less frequent."""

import gc

import pytest
from gunicorn.workers.gthread import ThreadWorker

from app.ops.heap import GC_FIRST_THRESHOLD
from app.ops.worker import FhirWorker


@pytest.fixture
def restored_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_the_worker_freezes_what_loading_the_app_made(restored_gc, monkeypatch):
    loaded = []
    monkeypatch.setattr(ThreadWorker, "load_wsgi", lambda self: loaded.append(self))
    gc.unfreeze()
    startup = [{"made": i} for i in range(1000)]  # what the application's start-up leaves behind
    worker = object.__new__(FhirWorker)
    FhirWorker.load_wsgi(worker)
    assert loaded == [worker]  # gunicorn's own loading ran first
    assert gc.get_freeze_count() >= len(startup)
    assert not any(obj is startup for obj in gc.get_objects())  # no longer scanned by any collection
    assert gc.get_threshold()[0] == GC_FIRST_THRESHOLD
