"""`ehc serve`'s worker runs its exit hooks to the end after Ctrl-C (app/ops/worker.py): the audit spool's last
shipment and the heartbeat's removal are exit hooks, and the arbiter's SIGQUIT, which follows the SIGINT that
Ctrl-C sent to the whole process group, used to arrive while they ran and cut them short."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A worker with gunicorn's quit handlers installed (as its init_signals does), whose exit hook receives the
# second quit signal half way through, exactly when the arbiter's SIGQUIT would come.
WORKER = textwrap.dedent("""
    import atexit, os, signal, sys, time
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace
    from app.ops.worker import FhirWorker

    worker = object.__new__(FhirWorker)
    worker.cfg = SimpleNamespace(worker_int=lambda w: None)
    worker.tpool = ThreadPoolExecutor(1)
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, worker.handle_quit)

    def exit_hook():
        print("hook started", flush=True)
        os.kill(os.getpid(), signal.SIGQUIT)
        time.sleep(0.2)  # the signal is handled at the next bytecode boundary, well within this
        print("hook finished", flush=True)

    atexit.register(exit_hook)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
    time.sleep(10)
    print("not stopped", flush=True)
""")


def test_a_second_quit_signal_does_not_cut_the_exit_hooks_short() -> None:
    done = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == ["hook started", "hook finished"], done.stderr
    assert done.returncode == 0
    assert "Traceback" not in done.stderr
