"""scripts/federation-demo: three server processes (gunicorn) on loopback, trust set up with `ehc nodes add`,
and every step of the walk-through passing (registration, PIXm, one card, consent, QR code)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "federation-demo"


def test_the_federation_demo_runs_and_every_step_passes(mongo_server: str, tmp_path: Path) -> None:
    prefix = f"demo_{uuid.uuid4().hex[:8]}_"
    out = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(tmp_path), "--mongodb-uri", mongo_server,
                          "--db-prefix", prefix], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert sum(line.startswith("[ok]") for line in lines) == 10 and not any("FAIL" in line for line in lines)
    assert "all steps passed" in out.stdout
    for p in ("00", "11", "31"):
        assert (tmp_path / f"node{p}" / "federation" / "node-key.json").stat().st_mode & 0o077 == 0
