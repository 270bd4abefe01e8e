"""Run the shell examples of README.md and docs/*.md, in order, as a reader would paste them.

The conventions (docs/architecture.md, "Writing docs"):
- Fenced blocks tagged `sh`, `bash`, `shell` or `console` are run; untagged blocks and other languages are not.
- The blocks of one file run in order in one shell session: variables set in one block are there in the next.
  Every docs/*.md file starts from the state the README left (its `$TOKEN`, `$B`, `$H`, `$ID` ...), like a
  reader who followed the quick start first.
- `127.0.0.1:8080` and `localhost:8080` (where `./scripts/serve` listens) are replaced by the test server's
  address; the working folder is a fresh one holding a link to `docs/` (so `@docs/examples/x.json` works).
- A block fails when a command fails (`set -e -o pipefail`) or when `curl` gets an HTTP status of 400 or more.
  A command expected to fail says so at the end of its first line: `# doc-test: expect 412`.
- A block that cannot run here says why, in a line of its own: `# doc-test: skip <reason>` (or
  `<!-- doc-test: skip <reason> -->` on the line before the fence, which readers do not see).
- `<!-- doc-test: file NAME -->` before a fence writes the block to NAME in the working folder instead of running
  it (e.g. a script that a later block runs).

Standalone: `python3 tests/docs_examples.py README.md docs/mpi.md --server http://127.0.0.1:8080` prints what
each block did.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_TAGS = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
HTML_MARK = re.compile(r"<!--\s*doc-test:\s*(skip|file)\s+(.+?)\s*-->")
SKIP_LINE = re.compile(r"^\s*#\s*doc-test:\s*skip\s+(\S.*)$")
EXPECT = re.compile(r"#\s*doc-test:\s*expect\s+(\d{3})\s*$")
DEFAULT_ADDRESSES = ("127.0.0.1:8080", "localhost:8080")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None = None  # the reason
    file: str | None = None  # write the text to this file instead of running it

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}:{self.line}"


@dataclass
class Result:
    block: Block
    ran: bool
    ok: bool
    stdout: str = ""
    stderr: str = ""
    statuses: list[str] = field(default_factory=list)


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file that matter here (shell blocks, and blocks written to files)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        mark = HTML_MARK.search(lines[start - 1]) if start > 0 else None
        block = Block(path, start + 1, lang, "\n".join(body) + "\n")
        if mark and mark.group(1) == "file":
            block.file = mark.group(2)
        elif lang not in SHELL_TAGS:
            continue
        if mark and mark.group(1) == "skip":
            block.skip = mark.group(2)
        for line in body:
            s = SKIP_LINE.match(line)
            if s:
                block.skip = s.group(1)
        out.append(block)
    return out


PRELUDE = r"""
__doctest_err=$(mktemp)
curl() {
  local expect="${DOCTEST_EXPECT:-}"
  command curl -w '%{stderr}\n@@doctest-status %{http_code}\n' "$@" 2>"$__doctest_err"
  local rc=$?
  local code
  code=$(sed -n 's/^@@doctest-status //p' "$__doctest_err" | tail -n 1)
  grep -v '^@@doctest-status' "$__doctest_err" | sed '/^$/d' >&2
  echo "$code curl $*" >> "$DOCTEST_STATUS_LOG"
  if [ "$rc" -ne 0 ]; then
    echo "doc-test: curl exited $rc: curl $*" >&2
    return "$rc"
  fi
  if [ -n "$expect" ]; then
    if [ "$code" != "$expect" ]; then
      echo "doc-test: expected HTTP $expect, got $code: curl $*" >&2
      return 22
    fi
  elif [ "${code:-0}" -ge 400 ]; then
    echo "doc-test: HTTP $code: curl $*" >&2
    return 22
  fi
  return 0
}
"""


def _prepare(block: Block, server: str | None) -> str:
    text = block.text
    if server:
        hostport = server.split("://", 1)[-1].rstrip("/")
        for address in DEFAULT_ADDRESSES:
            text = text.replace(address, hostport)
    out = []
    for line in text.splitlines():
        m = EXPECT.search(line)
        if m:
            stripped = line.lstrip()
            line = line[: len(line) - len(stripped)] + f"DOCTEST_EXPECT={m.group(1)} " + stripped
        out.append(line)
    return "\n".join(out) + "\n"


class Session:
    """One reader's shell session: a working folder, and the variables the blocks so far have set."""

    def __init__(self, env: dict[str, str], server: str | None, workdir: Path | None = None,
                 state: str = "") -> None:
        self.env = env
        self.server = server
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="doc-test-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.workdir / "docs").exists():
            (self.workdir / "docs").symlink_to(ROOT / "docs")
        self.state = self.workdir / ".doc-test-state.sh"
        if state and not self.state.exists():
            self.state.write_text(state, encoding="utf-8")
        self.status_log = self.workdir / ".doc-test-statuses"
        (self.workdir / ".doc-test-prelude.sh").write_text(PRELUDE, encoding="utf-8")

    def fork(self) -> Session:
        """A new session starting from this one's variables, in a folder of its own beside this one's (under a
        test's tmp_path, which pytest cleans up)."""
        state = self.state.read_text(encoding="utf-8") if self.state.exists() else ""
        return Session(self.env, self.server, Path(tempfile.mkdtemp(prefix="doc-test-", dir=self.workdir.parent)),
                       state=state)

    def run(self, block: Block, timeout: float = 120.0) -> Result:
        if block.file:
            (self.workdir / block.file).write_text(block.text, encoding="utf-8")
            return Result(block, ran=False, ok=True)
        if block.skip:
            return Result(block, ran=False, ok=True)
        script = self.workdir / f".doc-test-block-{block.line}.sh"
        state = shlex.quote(str(self.state))
        script.write_text(
            "__doctest_before=$(compgen -v | sort)\n"
            f"source {shlex.quote(str(self.workdir / '.doc-test-prelude.sh'))}\n"
            f"[ -f {state} ] && source {state} 2>/dev/null\n"
            "set -eE -o pipefail\n"
            "trap 'echo \"doc-test: failed at line $LINENO of the block: $BASH_COMMAND\" >&2' ERR\n"
            + _prepare(block, self.server)
            + "set +eE\ntrap - ERR\n"
            "for __v in $(comm -13 <(echo \"$__doctest_before\") <(compgen -v | sort)); do\n"
            "  case $__v in __*|BASH*|FUNCNAME|PIPESTATUS|LINENO|_) ;; *) declare -p \"$__v\" ;; esac\n"
            f"done > {state}.new && mv {state}.new {state}\n",
            encoding="utf-8")
        before = self.status_log.read_text() if self.status_log.exists() else ""
        env = dict(self.env, DOCTEST_STATUS_LOG=str(self.status_log))
        try:
            proc = subprocess.run(["bash", str(script)], cwd=self.workdir, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            ok, out, err = proc.returncode == 0, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            ok, out, err = False, str(exc.stdout or ""), f"doc-test: timed out after {timeout} s"
        after = self.status_log.read_text() if self.status_log.exists() else ""
        return Result(block, True, ok, out, err, after[len(before):].splitlines())


def ehc_shim(directory: Path) -> Path:
    """A bin folder with `ehc` running this Python's app.cli (the reader's `ehc` after ./scripts/serve)."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "ehc"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m app.cli \"$@\"\n", encoding="utf-8")
    shim.chmod(0o755)
    return directory


def describe(result: Result) -> str:
    b = result.block
    return "\n".join([f"{b.where}: the example failed", "--- example ---", b.text.rstrip(),
                      "--- HTTP statuses ---", *result.statuses[-10:],
                      "--- stdout (end) ---", result.stdout[-1500:].rstrip(),
                      "--- stderr (end) ---", result.stderr[-2500:].rstrip()])


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="run the shell examples of Markdown files")
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--server", default=None, help="root URL of a running server (replaces 127.0.0.1:8080)")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    env["PATH"] = f"{ehc_shim(Path(tempfile.mkdtemp()) / 'bin')}:{env['PATH']}"
    files = [f.resolve() for f in args.files] or doc_files()
    session = Session(env, args.server)
    failed = 0
    for path in files:
        for block in blocks(path):
            result = session.run(block)
            state = "skip " + (block.skip or "") if block.skip else ("file " + str(block.file) if block.file
                                                                      else ("ok" if result.ok else "FAILED"))
            print(f"{block.where}: {state}")
            if result.ran and not result.ok:
                failed += 1
                print(describe(result))
                break
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
