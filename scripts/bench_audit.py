"""Soak benchmark of the audit path: does it decay under sustained load? (issue #12)

N concurrent writers produce audit records for a bounded time while the background sealer (app.audit.plugin
SealLoop, as in the server) seals them. Every window (10 s) it prints: records written per second, the
median and p95 time a writer waited for its record to be durable (group commit), inserts issued per record
(with the spool, the default: its shipments; `--audit-spool off`: one per group-commit batch),
the backlog (events written - sealed), events sealed per second, and the sealer's passes (count, median and max
pass time). At the end it compares the last minute with the first: written/s must stay >= 90 %, and the pass
time must not grow with the backlog. Writes docs/benchmarks/audit.md with --output.

Modes:
- direct (default): the writers call AuditWriter as the request hooks do, on a fresh database of the
  embedded FerretDB (or EHC_MONGODB_URI): a CRUD-like mix, 4 of every 7 "requests" a write (intent, then
  event named after it), 3 a read (one event), patients drawn from a pool (posting lists of many keys).
  `--rate R` paces the writers to R requests/s in total (the load the server would bring); without it they
  run flat out (the capacity of the audit path with the sealer competing for the database).
- --url BASE: N threads GET BASE/Patient/{id} of --patients Patients created first, on a live server
  (EHC_AUTH_REQUIRED=false, or --token); the backlog and events sealed per second are read from --db-uri (the
  head of the chain vs requests sent; the server's passes are not seen, their columns stay 0).

    python3 scripts/bench_audit.py [--writers 8] [--seconds 180] [--rate 0] [--output docs/benchmarks/audit.md]
    python3 scripts/bench_audit.py --url http://127.0.0.1:8080/fhir --db-uri mongodb://127.0.0.1:27018/ehc
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.audit import build_trail  # noqa: E402
from app.audit.chain import HEAD_ID, STATE, verify  # noqa: E402
from app.audit.plugin import SealLoop  # noqa: E402
from app.audit.sealer import SealResult  # noqa: E402
from app.config import Settings  # noqa: E402
from app.core.access import AccessRecord, Principal  # noqa: E402

WINDOW = 10.0
MINUTE = 60.0


@dataclass
class Window:
    start: float
    requests: int = 0
    records: int = 0
    waits: list[float] = field(default_factory=list)
    inserts: int = 0
    passes: list[float] = field(default_factory=list)
    sealed: int = 0
    backlog: int = 0


class Recorder:
    def __init__(self, started: float) -> None:
        self.started = started
        self.lock = threading.Lock()
        self.windows: list[Window] = []

    def window(self, now: float | None = None) -> Window:
        now = time.monotonic() if now is None else now
        index = int((now - self.started) // WINDOW)
        with self.lock:
            while len(self.windows) <= index:
                self.windows.append(Window(self.started + len(self.windows) * WINDOW))
            return self.windows[index]

    def request(self, records: int, waits: list[float]) -> None:
        w = self.window()
        with self.lock:
            w.requests += 1
            w.records += records
            w.waits.extend(waits)

    def batch(self, _records: int, _seconds: float) -> None:
        w = self.window()
        with self.lock:
            w.inserts += 1

    def seal_pass(self, result: SealResult) -> None:
        w = self.window()
        with self.lock:
            w.passes.append(result.seconds)
            w.sealed += result.sealed


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- direct mode -----------------------------------------------------------------------------------------

def run_direct(args: argparse.Namespace) -> tuple[Recorder, dict[str, Any]]:
    from app.services import build_services
    from app.store.embedded import EmbeddedDatabase, free_port

    embedded = None
    base = os.environ.get("EHC_MONGODB_URI")
    tmp = Path(tempfile.mkdtemp(prefix="ehc-bench-audit-"))
    if base:
        base = base.rsplit("/", 1)[0] + "/"
    else:
        embedded = EmbeddedDatabase(tmp / "db", free_port())
        embedded.start()
        base = embedded.uri.rstrip("/") + "/"
    uri = base + "bench_audit_" + uuid.uuid4().hex[:8]
    svc = build_services(Settings(mongodb_uri=uri, province="11", data_dir=tmp / "data", auth_required=False,
                                  audit_spool=args.audit_spool == "on"))
    kind = "MongoDB" if svc.handle.supports_secondary_indexes else "FerretDB v1.24 (SQLite)"
    info: dict[str, Any] = {"database": kind}
    try:
        writer, sealer = build_trail(svc)
        loop = SealLoop(sealer)
        started = time.monotonic()
        rec = Recorder(started)
        spool = writer.committer.spool
        if spool is None:  # each group-commit batch is an insert
            writer.committer.on_batch = rec.batch
        shipped = 0  # with the spool: its shipments are the inserts (counted every second below)
        loop.on_pass = rec.seal_pass
        stop = threading.Event()
        written = [0]
        wlock = threading.Lock()
        pace = args.writers / args.rate if args.rate else 0.0  # seconds between one writer's requests
        who = Principal(client_id="bench-his", user="Practitioner/doc-1", organization="org-1", province="11")

        def work(n: int) -> None:
            rnd = random.Random(n)
            i = 0
            next_at = time.monotonic()
            while not stop.is_set():
                pid = f"p{rnd.randrange(args.patients)}"
                token = writer.committer.enter()
                waits = []
                t = time.monotonic()
                if i % 7 in (0, 2, 4, 6):  # create, update, create Observation, delete
                    iid = writer.reserve("PUT", f"Patient/{pid}", None, "10.0.0.1", who)
                    waits.append(time.monotonic() - t)
                    t = time.monotonic()
                    writer.write(AccessRecord("update", "Patient", [pid], "0", 200, who), intent_id=iid,
                                 method="PUT", path=f"Patient/{pid}", leaving=token)
                    records = 2
                else:
                    writer.write(AccessRecord("read", "Patient", [pid], "0", 200, who), method="GET",
                                 path=f"Patient/{pid}", leaving=token)
                    records = 1
                waits.append(time.monotonic() - t)
                rec.request(records, waits)
                with wlock:
                    written[0] += 1  # events (an intent is not one: backlog = events not sealed yet)
                i += 1
                if pace:
                    next_at += pace
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)

        threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(args.writers)]
        for t in threads:
            t.start()
        loop.ensure_running()
        state = svc.handle.db[STATE]
        last_print = 0
        while time.monotonic() - started < args.seconds:
            time.sleep(1.0)
            head = int((state.find_one({"_id": HEAD_ID}) or {}).get("seq") or 0)
            w = rec.window()
            with rec.lock:
                w.backlog = max(w.backlog, written[0] - head)
                if spool is not None:
                    w.inserts += spool.stats.ships - shipped
                    shipped = spool.stats.ships
            last_print = report_window(rec, started, last_print)
        stop.set()
        for t in threads:
            t.join()
        loop.stop()
        drain_started = time.monotonic()
        while time.monotonic() - drain_started < args.drain:  # seal what is left, for a bounded time
            result = sealer.seal(wait_seconds=30.0)
            if result is None or not result.more:
                break
        drained = time.monotonic() - drain_started
        report = verify(svc.handle.db)
        info.update(ok=report.ok, sealed=report.sealed, pending=report.pending, written=written[0],
                    largest_batch=writer.committer.stats.largest, drained=drained)
        return rec, info
    finally:
        svc.handle.client.drop_database(svc.handle.db.name)
        svc.handle.close()
        if embedded is not None:
            embedded.stop()


# -- live server mode --------------------------------------------------------------------------------------

def run_live(args: argparse.Namespace) -> tuple[Recorder, dict[str, Any]]:
    import requests
    from pymongo import MongoClient

    headers = {"Content-Type": "application/fhir+json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    body: dict[str, Any] = {"resourceType": "Patient", "name": [{"family": "测试"}], "gender": "female"}
    client: MongoClient = MongoClient(args.db_uri)
    db = client.get_default_database()
    state = db[STATE]

    def head() -> int:
        return int((state.find_one({"_id": HEAD_ID}) or {}).get("seq") or 0)

    first_head = head()
    ids = [requests.post(f"{args.url}/Patient", json=body, headers=headers, timeout=30).json()["id"]
           for _ in range(args.patients)]
    started = time.monotonic()
    rec = Recorder(started)
    stop = threading.Event()
    sent = [args.patients]  # the creations' events count too
    lock = threading.Lock()

    def work(n: int) -> None:
        session = requests.Session()
        rnd = random.Random(n)
        while not stop.is_set():
            t = time.monotonic()
            r = session.get(f"{args.url}/Patient/{rnd.choice(ids)}", headers=headers, timeout=60)
            r.raise_for_status()
            rec.request(1, [time.monotonic() - t])
            with lock:
                sent[0] += 1

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(args.writers)]
    for t in threads:
        t.start()
    last_print = 0
    last_sealed = 0
    while time.monotonic() - started < args.seconds:
        time.sleep(1.0)
        w = rec.window()
        sealed = head() - first_head
        with rec.lock:
            w.backlog = max(w.backlog, sent[0] - sealed)
            w.sealed += max(0, sealed - last_sealed)  # the server's passes are not seen from here
        last_sealed = sealed
        last_print = report_window(rec, started, last_print)
    stop.set()
    for t in threads:
        t.join()
    client.close()
    return rec, {"database": args.db_uri.split("@")[-1], "written": sent[0]}


# -- reporting ------------------------------------------------------------------------------------------

HEADER = ("| t (s) | requests/s | records/s | wait p50 ms | wait p95 ms | inserts/record | backlog max | "
          "sealed/s | passes | pass p50 ms | pass max ms |")


def row(w: Window, t: int) -> str:
    per = w.inserts / w.records if w.records else 0.0
    return (f"| {t:>4} | {w.requests / WINDOW:8.1f} | {w.records / WINDOW:8.1f} | {pct(w.waits, 0.5) * 1000:7.1f} | "
            f"{pct(w.waits, 0.95) * 1000:7.1f} | {per:5.3f} | {w.backlog:6d} | {w.sealed / WINDOW:7.1f} | "
            f"{len(w.passes):3d} | {pct(w.passes, 0.5) * 1000:7.0f} | {max(w.passes, default=0) * 1000:7.0f} |")


def report_window(rec: Recorder, started: float, last_print: int) -> int:
    """Print each window once it has ended; returns the last window printed."""
    done = int((time.monotonic() - started) // WINDOW)
    if done > last_print:
        print_window(rec, done - 1)
        return done
    return last_print


def print_window(rec: Recorder, index: int) -> None:
    if index == 0:
        print(HEADER, flush=True)
    if index < len(rec.windows):
        print(row(rec.windows[index], int((index + 1) * WINDOW)), flush=True)


def complete(rec: Recorder, seconds: float) -> list[Window]:
    """The windows that ended before the run did."""
    return [w for w in rec.windows if w.start + WINDOW <= rec.started + seconds + 0.5]


def summary(rec: Recorder, seconds: float) -> dict[str, float]:
    full = complete(rec, seconds)
    per = int(MINUTE // WINDOW)
    first, last = full[:per], full[-per:]

    def rate(ws: list[Window]) -> float:
        return sum(w.requests for w in ws) / (len(ws) * WINDOW) if ws else 0.0

    passes = [p for w in rec.windows for p in w.passes]
    return {
        "first": rate(first), "last": rate(last), "ratio": rate(last) / rate(first) if rate(first) else 0.0,
        "backlog_max": float(max((w.backlog for w in rec.windows), default=0)),
        "pass_first": statistics.median([p for w in first for p in w.passes] or [0.0]),
        "pass_last": statistics.median([p for w in last for p in w.passes] or [0.0]),
        "pass_max": max(passes, default=0.0),
        "wait_p50": statistics.median([x for w in rec.windows for x in w.waits] or [0.0]),
        "inserts_per_record": (sum(w.inserts for w in rec.windows) / max(1, sum(w.records for w in rec.windows))),
    }


def markdown(rec: Recorder, info: dict[str, Any], s: dict[str, float], args: argparse.Namespace) -> str:
    mode = f"live server {args.url}" if args.url else (
        f"writer directly, {args.rate:g} requests/s in total" if args.rate else "writer directly, flat out")
    if not args.url:
        mode += ", audit spool " + args.audit_spool
    lines = [
        f"### {args.writers} writers, {args.seconds:g} s, {mode}",
        "",
        f"Database: {info['database']}. {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}. Per {WINDOW:g} s window: medians of the "
        "window's samples; backlog = events written - sealed, sampled every second.",
        "",
        HEADER,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[row(w, int((i + 1) * WINDOW)) for i, w in enumerate(complete(rec, args.seconds))],
        "",
        f"- requests/s, first minute {s['first']:.1f}, last minute {s['last']:.1f}: **{s['ratio'] * 100:.0f} %** "
        f"(target >= 90 %)",
        f"- sealer pass time, median: first minute {s['pass_first'] * 1000:.0f} ms, last minute "
        f"{s['pass_last'] * 1000:.0f} ms; longest {s['pass_max'] * 1000:.0f} ms; max backlog {s['backlog_max']:.0f}",
        f"- writer wait for durability, median {s['wait_p50'] * 1000:.1f} ms; inserts per record "
        f"{s['inserts_per_record']:.3f}",
    ]
    if "ok" in info:
        lines.append(f"- after the run and {info['drained']:.0f} s of sealing: {info['written']} events written, "
                     f"chain of {info['sealed']} events, {info['pending']} records pending, `verify` "
                     f"{'intact' if info['ok'] else 'BROKEN'}; largest group-commit batch {info['largest_batch']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--rate", type=float, default=0.0, help="requests/s in total (0: flat out)")
    ap.add_argument("--patients", type=int, default=2000,
                    help="patients the requests are about (direct: ids drawn; --url: Patients created first)")
    ap.add_argument("--url", help="a live server's FHIR base instead of the writer")
    ap.add_argument("--db-uri", help="with --url: the server's database, to read the chain head")
    ap.add_argument("--token", help="with --url: a bearer token")
    ap.add_argument("--audit-spool", choices=("on", "off"), default="on",
                    help="records durable in the local spool first (the server's default), or inserted per batch")
    ap.add_argument("--drain", type=float, default=120.0, help="seconds to seal the backlog after the run")
    ap.add_argument("--output", type=Path, help="append the run's table to this markdown file")
    args = ap.parse_args()
    if args.url and not args.db_uri:
        ap.error("--url needs --db-uri")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (the embedded database) when killed
    rec, info = run_live(args) if args.url else run_direct(args)
    s = summary(rec, args.seconds)
    text = markdown(rec, info, s, args)
    print()
    print(text)
    if args.output:
        with args.output.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    if s["ratio"] < 0.9:
        print(f"DECAY: the last minute ran at {s['ratio'] * 100:.0f} % of the first", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
