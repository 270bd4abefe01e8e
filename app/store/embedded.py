"""The embedded default database: FerretDB v1.24.2 on SQLite, or a `mongod` found on PATH.

FerretDB is built from the Go module proxy on first use. `go install ...ferretdb@v1.24.2` cannot be used
as-is: the module zip lacks the generated build/version/version.txt (the binary panics at start), and the
proxy here refuses the version-list lookup that `go install` makes. So we download the module, write
version.txt, apply our patches (below) and `go build` it.

The patches (PATCHES and SJSON_DECODERS below), each checked to apply exactly once:
1. v1.24.2's SQLite backend creates its unique _id index on `_ferretdb_sjson->"_id"` but pushes `_id`
   filters down as `_ferretdb_sjson->'$._id'`; SQLite only uses an expression index for the identical
   expression, so every lookup by _id scanned the whole table (31 lookups/s at 20,000 documents). Making
   the two expressions the same turns those lookups into index searches (1,400/s at 50,000 documents).
2. update and findAndModify read the document, apply the operators in Go and write it back without a lock,
   so concurrent updates of one document lose each other's changes (8 threads x 100 `$addToSet`: 216 of
   800 kept; `$inc` likewise). MongoDB makes single-document updates atomic; one mutex around those two
   commands restores that (SQLite writes one transaction at a time anyway).
3. Cheaper reads and writes, no change of behaviour. Every document read decodes its stored JSON value by
   value, and each value went through a new json.Decoder (a buffer and a scanner each) plus a check that
   nothing was left: json.Unmarshal does the same validation in one call (values are FerretDB's own output).
   And every query iterator was tracked for leaks with a captured stack, a pprof profile entry and a finalizer:
   FerretDB's own test aid, about 15 % of the CPU of a `find`; it is switched off. Together, the database's CPU
   per `find` by `_id` fell by about a third (0.73 to 0.47 ms), and per read request with its audit event
   from 1.48 to 1.08 ms (docs/benchmarks/db-cost.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"
_UPDATE_FN = "func (h *Handler) updateDocument(ctx context.Context, params *common.UpdateParams) " \
    "(int32, int32, *types.Array, error) {\n"
_FAM_FN = "func (h *Handler) findAndModifyDocument(ctx context.Context, params *common.FindAndModifyParams) " \
    "(*findAndModifyResult, error) {\n"
_LOCK = "\trmwMu.Lock()\n\tdefer rmwMu.Unlock()\n\n"
# (file, text to find, replacement); each must match exactly once, or the build stops.
PATCHES = [
    # 1. use the _id index for _id lookups
    ("internal/backends/sqlite/metadata/metadata.go",
     "IDColumn = DefaultColumn + \"->'$._id'\"", 'IDColumn = DefaultColumn + `->"_id"`'),
    # 2. single-document updates atomic, as in MongoDB
    ("internal/handler/msg_update.go", 'import (\n\t"context"\n', 'import (\n\t"context"\n\t"sync"\n'),
    ("internal/handler/msg_update.go", _UPDATE_FN,
     "// rmwMu makes read-modify-write commands atomic (ehc patch).\nvar rmwMu sync.Mutex\n\n" + _UPDATE_FN + _LOCK),
    ("internal/handler/msg_findandmodify.go", _FAM_FN, _FAM_FN + _LOCK),
    # 3. no leak tracking of every iterator (a stack, a profile entry and a finalizer each)
    ("internal/util/resource/resource.go", "var profilesM sync.Mutex",
     "// trackResources: leak tracking is FerretDB's own test aid (ehc patch).\nvar trackResources = false\n\n"
     "var profilesM sync.Mutex"),
    *[("internal/util/resource/resource.go", fn, fn + "\n\tif !trackResources {\n\t\treturn\n\t}\n")
      for fn in ("func Track(obj any, token *Token) {\n\tcheckArgs(obj, token)\n",
                 "func Untrack(obj any, token *Token) {\n\tcheckArgs(obj, token)\n")],
    # 3. a stored document's fields decoded with json.Unmarshal, not a Decoder and a check of what is left
    ("internal/handler/sjson/sjson.go",
     "\tvar v map[string]json.RawMessage\n\tr := bytes.NewReader(data)\n\tdec := json.NewDecoder(r)\n\n"
     "\terr := dec.Decode(&v)\n\tif err != nil {\n\t\treturn nil, lazyerrors.Error(err)\n\t}\n\n"
     "\tif err = checkConsumed(dec, r); err != nil {\n\t\treturn nil, lazyerrors.Error(err)\n\t}\n",
     "\tvar v map[string]json.RawMessage\n\tif err := json.Unmarshal(data, &v); err != nil {\n"
     "\t\treturn nil, lazyerrors.Error(err)\n\t}\n"),
    ("internal/handler/sjson/sjson.go", "\tr = bytes.NewReader(jsch)\n\tdec = json.NewDecoder(r)\n",
     "\tr := bytes.NewReader(jsch)\n\tdec := json.NewDecoder(r)\n"),
]
# 3. each value type's UnmarshalJSON: a new Decoder per value, then checkConsumed -> json.Unmarshal (one per file)
SJSON_DECODERS = ("array", "bool", "datetime", "document", "double", "int32", "int64", "object_id", "regex",
                  "string", "timestamp")
_SJSON_DECODE = re.compile(
    r"\tr := bytes\.NewReader\(data\)\n\tdec := json\.NewDecoder\(r\)\n(?:\tdec\.DisallowUnknownFields\(\)\n)?\n"
    r"\tvar (\w+) ([\w.\[\]]+)\n"
    r"\tif err := dec\.Decode\(&\1\); err != nil \{\n\t\treturn lazyerrors\.Error\(err\)\n\t\}\n\n"
    r"\tif err := checkConsumed\(dec, r\); err != nil \{\n\t\treturn lazyerrors\.Error\(err\)\n\t\}\n")
_SJSON_UNMARSHAL = ("\tvar \\1 \\2\n"
                    "\tif err := json.Unmarshal(data, &\\1); err != nil {\n\t\treturn lazyerrors.Error(err)\n\t}\n")
BUILD_TAG = f"{FERRETDB_VERSION}-ehc3"  # bump when the patches change


# Go's collector at its default (GOGC=100) took about a tenth of the database's CPU under the k6 read load;
# GOGC=400 cuts the database CPU per read with its audit event by 11-15 % (scripts/bench_db_cost.py
# --compare-env GOGC=100). The price is memory: about 20 MB more at rest, and peaks during large bulk writes
# about twice as high (206 -> 442 MB for one insert_many of 20,000 Patients); GOMEMLIMIT makes the collector
# work harder as the heap nears 512 MiB.
# GOMAXPROCS stays at Go's default (every CPU). Measured alternately on 2 CPUs, GOMAXPROCS=1 cut the database's
# CPU per request under the k6 load by 14-15 %, but the tails grew: `$ihe-pix` p95 at one client 11.7-13.2 ms
# against 10.8-11.3, `$ehc-verify` p95 87-94 ms against 61-72, as one long command held the only thread.
GO_RUNTIME_DEFAULTS = {"GOGC": "400", "GOMEMLIMIT": "512MiB"}


def _go_runtime_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for the database process: the caller's, with our Go collector defaults where unset."""
    return {**GO_RUNTIME_DEFAULTS, **environ}


class EmbeddedDatabaseError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"[ehc db] {msg}", file=sys.stderr, flush=True)


def ferretdb_binary_path() -> Path:
    if os.environ.get("EHC_FERRETDB_BIN"):
        return Path(os.environ["EHC_FERRETDB_BIN"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "ehc" / f"ferretdb-{BUILD_TAG}" / "ferretdb"


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EmbeddedDatabaseError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def install_ferretdb(target: Path | None = None) -> Path:
    """Build FerretDB v1.24.2 with Go (once; cached). Returns the binary path. Concurrent callers (parallel
    test workers, two commands) wait for one build on a lock file instead of racing on the same files."""
    import fcntl

    target = target or ferretdb_binary_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".install.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log("another process is building FerretDB; waiting for it...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # built by the process we waited for
            return target
        # Under the lock no other build runs: a partial binary left here is of a build killed before its cleanup.
        for stale in target.parent.glob("ferretdb-*.partial"):
            stale.unlink(missing_ok=True)
        return _build_ferretdb(target)


def _patch(src: Path) -> None:
    """Apply PATCHES and the SJSON_DECODERS rewrite to the FerretDB source; each must match exactly once."""
    for name, find, replace in PATCHES:
        path = src / name
        text = path.read_text()
        if text.count(find) != 1:
            raise EmbeddedDatabaseError(f"FerretDB source changed; cannot apply our patch to {name}")
        path.write_text(text.replace(find, replace))
    for name in SJSON_DECODERS:
        path = src / "internal" / "handler" / "sjson" / f"{name}.go"
        text, found = _SJSON_DECODE.subn(_SJSON_UNMARSHAL, path.read_text())
        if found != 1:
            raise EmbeddedDatabaseError(f"FerretDB source changed; cannot apply our patch to sjson/{name}.go")
        path.write_text(text)


def _build_ferretdb(target: Path) -> Path:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not go:
        raise EmbeddedDatabaseError("Go is needed to build FerretDB (the embedded database) and was not found")
    _log(f"building FerretDB {FERRETDB_VERSION} from the Go module proxy, once (cached in {target.parent}); this "
         "takes minutes: 2 on an idle machine, 5 or more on a busy 2-core one. Downloading the module...")
    env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0")
    info = json.loads(_run([go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"], env=env))
    with tempfile.TemporaryDirectory(prefix="ferretdb-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(info["Dir"], src)
        for path in src.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (src / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
        _patch(src)
        _log("compiling (go build ./cmd/ferretdb)...")
        # A temporary name of our own in the target folder, then an atomic rename.
        fd, partial_name = tempfile.mkstemp(prefix="ferretdb-", suffix=".partial", dir=target.parent)
        os.close(fd)
        partial = Path(partial_name)
        try:
            t0 = time.monotonic()
            _run([go, "build", "-trimpath", "-o", str(partial), "./cmd/ferretdb"], cwd=src, env=env)
            partial.chmod(0o755)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        _log(f"compiled in {time.monotonic() - t0:.0f} s")
    _log(f"FerretDB ready: {target}")
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _private_tree(root: Path) -> None:
    """root and every folder below 0700, every file 0600: the database files hold health records."""
    for path in [root, *root.rglob("*")]:
        try:
            if path.is_symlink():
                continue
            wanted = 0o700 if path.is_dir() else 0o600
            if path.stat().st_mode & 0o777 != wanted:
                path.chmod(wanted)
        except (FileNotFoundError, PermissionError):
            pass


@dataclass
class EmbeddedDatabase:
    """One database server process on 127.0.0.1, its files under data_dir."""

    data_dir: Path
    port: int
    binary: Path | None = None  # another FerretDB build (benchmarks compare builds); default: ours

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "db.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "db.log"

    def command(self) -> list[str]:
        mongod = shutil.which("mongod")
        if mongod:
            dbpath = self.data_dir / "mongod"
            dbpath.mkdir(parents=True, exist_ok=True, mode=0o700)
            return [mongod, "--dbpath", str(dbpath), "--bind_ip", "127.0.0.1", "--port", str(self.port), "--quiet"]
        sqlite_dir = self.data_dir / "ferretdb"
        sqlite_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return [
            str(self.binary or install_ferretdb()),
            "--handler=sqlite",
            # WAL with synchronous=NORMAL: a commit survives a killed process (the kill tests), not a power
            # cut. Production runs MongoDB with its journal; this is the local and CI database.
            f"--sqlite-url=file:{sqlite_dir}/?_pragma=synchronous(normal)",
            f"--listen-addr=127.0.0.1:{self.port}",
            "--telemetry=disable",  # nothing may leave the machine
            f"--state-dir={self.data_dir}",  # its state.json, otherwise written to the working directory
            "--debug-addr=-",  # frees port 8088
            "--log-level=warn",
        ]

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start(self, timeout: float = 30.0) -> int:
        """Start the server unless it already runs; returns its pid."""
        pid = self.running_pid()
        if pid and _port_open(self.port):
            return pid
        if _port_open(self.port):
            raise EmbeddedDatabaseError(f"127.0.0.1:{self.port} is in use by another process (a database of another "
                                        "data folder?); stop it, or choose another port with EHC_DB_PORT")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cmd = self.command()
        _private_tree(self.data_dir)  # also what an older version left 0644
        log = os.fdopen(os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
        # umask 077: the database files the server creates (SQLite files, WAL, state.json) are 0600.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, umask=0o077,
                                env=_go_runtime_env(os.environ))
        log.close()
        fd = os.open(self.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedDatabaseError(f"database exited at start; see {self.log_file}")
            if _port_open(self.port):
                return proc.pid
            time.sleep(0.05)
        proc.kill()
        raise EmbeddedDatabaseError(f"database did not listen on 127.0.0.1:{self.port} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> bool:
        pid = self.running_pid()
        if not pid:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it, or it lingers as a zombie
                    break
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> dict[str, object]:
        pid = self.running_pid()
        return {"running": bool(pid and _port_open(self.port)), "pid": pid, "uri": self.uri,
                "data_dir": str(self.data_dir)}
