"""A real server process on 127.0.0.1 for tests that need parallel workers or a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

from app.store.embedded import free_port


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """The Flask app served on a free 127.0.0.1 port by a threaded werkzeug server; yields its root URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


class LiveServer:
    def __init__(self, db_uri: str, data_dir: Path, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.env = dict(os.environ, EHC_MONGODB_URI=db_uri, EHC_AUTH_REQUIRED="false", EHC_DATA_DIR=str(data_dir),
                        EHC_PROVINCE="11", **(env or {}))
        self.workers = workers
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> LiveServer:
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}",
               "--graceful-timeout", "2", "--timeout", "120", "app.wsgi:app"]
        self.log = self.data_dir / "server.log"
        self.proc = subprocess.Popen(cmd, env=self.env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:  # not listening yet, or workers still booting
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        """kill -9 the whole process group, as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class EhcServe:
    """`ehc serve` as an operator starts it (gunicorn, auth on), in its own data folder, on a free port."""

    def __init__(self, data_dir: Path, db_uri: str, workers: int = 2, threads: int = 4,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = dict(os.environ, EHC_MONGODB_URI=db_uri, EHC_DATA_DIR=str(data_dir), EHC_PROVINCE="11")
        self.env.pop("EHC_AUTH_REQUIRED", None)
        self.env.pop("EHC_BASE_URL", None)
        self.env.update(env or {})
        self.cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", str(workers),
                    "--threads", str(threads)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "serve.log"

    def start(self, timeout: float = 90.0) -> EhcServe:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.root}/readyz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"ehc serve exited: {self.log.read_text()[-3000:]}")
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("ehc serve did not become ready")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
