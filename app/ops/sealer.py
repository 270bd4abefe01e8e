"""The audit sealer as a process of its own under `ehc serve`, restarted when it exits.

Sealing is Python work (an AuditEvent built, indexed and hashed per event). In a worker's background thread it
held that worker's GIL for a fifth of the time under a read load, and a request thread waiting for the GIL waits
up to the interpreter's 5 ms switch interval each time: measured on 2026-11-30 with k6 at 8 users, alternately,
2 rounds each, reads went from 379-388 to 395-402 req/s and their p95 from 47-49 to 36-40 ms, and `$ihe-pix`
at one client from a p95 of 9.9-10.4 to 8.8-9.0 ms, when one process sealed instead of the workers. So
`ehc serve` sets EHC_BACKGROUND_SEALING=off for its workers and runs `ehc audit seal --follow` beside them. The
workers still seal synchronously before an AuditEvent read and at start-up, and the lease ("audit-seal") keeps
one sealer at a time whoever runs it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

log = logging.getLogger("ehc.audit")
RESTART_DELAY = 1.0  # seconds before a sealer that exited is started again


class SealerProcess:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="ehc-sealer-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        # A session of its own: Ctrl-C to the server's process group does not reach it; stop() ends it.
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "audit", "seal", "--follow"],
                                     stdout=subprocess.DEVNULL, start_new_session=True)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            assert self.proc is not None
            # (Its exit status is not telling: gunicorn's arbiter reaps every child it is told of by SIGCHLD.)
            self.proc.wait()
            if self._stopping.wait(RESTART_DELAY):
                return
            log.warning("audit: the sealer process exited; starting it again")
            self._spawn()

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # it finishes its pass: a pass is bounded (Sealer.budget)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
