"""Benchmark SM2 signing and verification: `openssl speed sm2` vs app.crypto vs gmssl's pure Python.

Runs everything in one go on one core (rounds interleaved so drift hits all equally), prints a table and
writes docs/benchmarks/crypto.md. The target: app.crypto reaches at least 85% of OpenSSL's own per-core
figures for both operations.

    python3 scripts/bench_crypto.py [--rounds 3] [--seconds 3] [--output docs/benchmarks/crypto.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.crypto import SM2PrivateKey, backend_name  # noqa: E402
from app.crypto.sm2 import _GmsslBackend  # noqa: E402

TARGET = 0.85
MESSAGE = b"\x5a" * 20  # `openssl speed` signs 20 bytes


def openssl_speed(seconds: int) -> tuple[float, float]:
    """(sign/s, verify/s) parsed from the summary row of `openssl speed -seconds N sm2`."""
    out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "sm2"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = re.search(r"SM2 \(.*\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)\s*$", line)
        if m:
            return float(m.group(1)), float(m.group(2))
    raise RuntimeError(f"no SM2 row in openssl speed output:\n{out}")


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per CPU second of fn, run for about `seconds` of wall time.

    Like `openssl speed`, which stops on a wall-clock alarm but divides by the user CPU time it used (unless
    given -elapsed): other load on the machine then does not count against either side.
    """
    fn()  # warm caches (ZA, key objects)
    count, cpu_start = 0, time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(10):
            fn()
        count += 10
    return count / (time.process_time() - cpu_start)


def ours(seconds: float) -> tuple[float, float]:
    key = SM2PrivateKey.generate()
    pub = key.public_key
    sig = key.sign(MESSAGE)
    return rate(lambda: key.sign(MESSAGE), seconds), rate(lambda: pub.verify(MESSAGE, sig), seconds)


def gmssl(seconds: float) -> tuple[float, float]:
    key = SM2PrivateKey.generate()
    crypt = _GmsslBackend._crypt(key.to_bytes(), key.public_key.x + key.public_key.y)  # gmssl's CryptSM2
    sig = crypt.sign_with_sm3(MESSAGE)
    sign_rate = rate(lambda: crypt.sign_with_sm3(MESSAGE), seconds)
    return sign_rate, rate(lambda: crypt.verify_with_sm3(sig, MESSAGE), seconds)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "crypto.md")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):  # one core for both sides; `openssl speed` inherits it
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    runs: dict[str, list[tuple[float, float]]] = {"openssl": [], "ours": []}
    for i in range(args.rounds):
        runs["openssl"].append(openssl_speed(args.seconds))
        runs["ours"].append(ours(args.seconds))
        print(f"round {i + 1}: openssl {runs['openssl'][-1]}, app.crypto {runs['ours'][-1]}", file=sys.stderr)
    gm = gmssl(args.seconds)

    def med(name: str, op: int) -> float:
        return statistics.median(r[op] for r in runs[name])

    rows = []
    ok = True
    for op, label in [(0, "sign/s"), (1, "verify/s")]:
        o, a = med("openssl", op), med("ours", op)
        # paired: each round's two runs saw the same machine state, so their ratio is the steadier figure
        paired = statistics.median(r[op] / q[op] for r, q in zip(runs["ours"], runs["openssl"], strict=True))
        ok = ok and paired >= TARGET
        rows.append((label, o, a, paired, gm[op], gm[op] / o))

    versions = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    header = ("| operation | `openssl speed sm2` | app.crypto | app.crypto / openssl "
              "| gmssl (pure Python) | gmssl / openssl |")
    lines = [
        "# SM2 benchmark",
        "",
        f"Measured by `scripts/bench_crypto.py` on {dt.date.today().isoformat()}: {cpu_model()}, "
        f"{os.cpu_count()} cores (every figure is single-core), {versions}, "
        f"Python {platform.python_version()}, app.crypto backend `{backend_name()}`. Medians of "
        f"{args.rounds} interleaved rounds of {args.seconds} s per operation (gmssl: one round). "
        "Rates are per CPU second, as `openssl speed` counts them (it divides by user CPU time). "
        "Message: 20 bytes, default user ID. The app.crypto / openssl column is the median of the per-round "
        "ratios (each round runs both back to back on the same pinned core).",
        "",
        header,
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {lab} | {o:,.0f} | {a:,.0f} | {ra:.0%} | {g:,.1f} | {rg:.1%} |"
          for lab, o, a, ra, g, rg in rows),
        "",
        f"Target: app.crypto ≥ {TARGET:.0%} of OpenSSL's own figures — {'met' if ok else 'NOT met'}.",
        "",
        "app.crypto hashes ZA and the message with hashlib and hands the digest to EVP_PKEY_sign on a key "
        "object built once; its own overhead per call (context, DER conversion, hashing) is about 5 µs of a "
        "~500 µs operation, so a gap of a few percent is machine noise. Rounds (sign/s, verify/s):",
        "",
        *(f"- round {i + 1}: openssl {o[0]:,.0f} / {o[1]:,.0f}; app.crypto {a[0]:,.0f} / {a[1]:,.0f}"
          for i, (o, a) in enumerate(zip(runs["openssl"], runs["ours"], strict=True))),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
