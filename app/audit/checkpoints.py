"""Signed checkpoints of the audit chain head, kept outside the database.

A hash chain kept in the same database shows edits of the past, but not the removal of its newest events, nor
a rewrite by someone who recomputes every later hash. So the sealer, every `interval` seconds while the chain
grows, signs its head with an SM2 key of the node (the keys /ehc/keys publishes, app/ehc/signing.py; audit
receives them as `NodeKeys` and does not import app.ehc) and appends it to a file in EHC_DATA_DIR
(`audit-checkpoints.jsonl`: JSON lines, append-only, mode 0600), also published at GET /ehc/audit/checkpoints.
`ehc audit verify` then reports a chain shorter than a checkpoint (`truncated`), a chain hash that differs
at a checkpointed sequence number (`rewritten`), and a checkpoint whose signature does not verify (`checkpoint`).

One checkpoint (a line of the file, a JSON object):

    {"chain": "<province>/<database>", "seq": 1234, "head": "<h(1234), 64 hex>",
     "time": "2026-01-02T03:04:05.678Z", "kid": "<signing key id>", "alg": "SM2SM3",
     "sig": "<base64url of r|s, 64 bytes, no padding>"}

    signed bytes = "EHC-AUDIT-CHECKPOINT-1:" + JSON of {chain, head, kid, seq, time}
                   (keys sorted, no spaces, UTF-8), SM2 with SM3 and the default user ID "1234567812345678"

The prefix keeps these signatures apart from QR tokens ("EHC1:..."), which the same keys sign.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from app.core.timeutil import to_instant, utcnow
from app.crypto import SM2PrivateKey, SM2PublicKey

PREFIX = b"EHC-AUDIT-CHECKPOINT-1:"
FILE_NAME = "audit-checkpoints.jsonl"
ALG = "SM2SM3"
INTERVAL = 60.0  # seconds between checkpoints while the chain grows


class SigningKeyLike(Protocol):
    @property
    def kid(self) -> str: ...

    @property
    def private(self) -> SM2PrivateKey: ...

    @property
    def public(self) -> SM2PublicKey: ...


class NodeKeys(Protocol):
    """What audit needs of the node's signing keys (app.ehc.signing.SigningKeys has this shape)."""

    def current(self) -> SigningKeyLike: ...

    def get(self, kid: str) -> SigningKeyLike | None: ...


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Checkpoint:
    chain: str
    seq: int
    head: str
    time: str
    kid: str
    sig: str
    alg: str = ALG

    def message(self) -> bytes:
        body = {"chain": self.chain, "head": self.head, "kid": self.kid, "seq": self.seq, "time": self.time}
        return PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def verify(self, public_key: SM2PublicKey) -> bool:
        try:
            return public_key.verify(self.message(), _unb64url(self.sig))
        except (ValueError, binascii.Error):
            return False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """ValueError when it is not a checkpoint."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            cp = cls(str(data["chain"]), data["seq"], str(data["head"]), str(data["time"]), str(data["kid"]),
                     str(data["sig"]), str(data.get("alg", ALG)))
        except KeyError as err:
            raise ValueError(f"{err.args[0]} is missing") from None
        if not isinstance(cp.seq, int) or isinstance(cp.seq, bool) or cp.seq < 1:
            raise ValueError("seq is not a positive integer")
        if len(cp.head) != 64 or any(c not in "0123456789abcdef" for c in cp.head):
            raise ValueError("head is not 64 lower-case hex characters")
        return cp


def sign(key: SigningKeyLike, chain: str, seq: int, head: str, when: datetime | None = None) -> Checkpoint:
    unsigned = Checkpoint(chain, seq, head, to_instant(when or utcnow()), key.kid, "")
    return Checkpoint(chain, seq, head, unsigned.time, key.kid, _b64url(key.private.sign(unsigned.message())))


def public_key_from_jwk(jwk: dict[str, Any]) -> SM2PublicKey:
    """A key as /ehc/keys publishes it ({kid, kty EC, crv SM2, x, y}); ValueError when it is not one."""
    if jwk.get("kty") != "EC" or jwk.get("crv") != "SM2":
        raise ValueError("not an SM2 key")
    return SM2PublicKey.from_xy(_unb64url(str(jwk["x"])), _unb64url(str(jwk["y"])))


@dataclass(frozen=True)
class Line:
    """A line of the checkpoint file: its number, and the checkpoint or why it is not one."""

    number: int
    checkpoint: Checkpoint | None
    error: str | None = None


def parse_lines(text: str) -> list[Line]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            out.append(Line(n, Checkpoint.from_json(json.loads(raw))))
        except ValueError as err:
            out.append(Line(n, None, str(err)))
    return out


class Checkpoints:
    """The checkpoint file of one chain; writes happen under the sealing lease (one writer at a time)."""

    def __init__(self, path: Path, chain: str, keys: NodeKeys, interval: float = INTERVAL) -> None:
        self.path = Path(path)
        self.chain = chain
        self.keys = keys
        self.interval = interval
        self._lock = threading.Lock()
        self._last: Checkpoint | None = None
        self._loaded = False

    # -- writing -----------------------------------------------------------------------------------------

    def maybe_write(self, seq: int, head: str) -> bool:
        """Sign and append the head when the chain grew and the last checkpoint is `interval` old."""
        with self._lock:
            now = utcnow()
            if not self._due(self._newest_cached(), seq, now):
                return False
            self._loaded = False  # another process (a gunicorn sibling) may have written one meanwhile
            if not self._due(self._newest_cached(), seq, now):
                return False
            self._append(sign(self.keys.current(), self.chain, seq, head, now))
            return True

    def _due(self, last: Checkpoint | None, seq: int, now: datetime) -> bool:
        if last is None:
            return True
        if seq <= last.seq:
            return False
        return (now - datetime.strptime(last.time, "%Y-%m-%dT%H:%M:%S.%fZ")).total_seconds() >= self.interval

    def write(self, seq: int, head: str) -> Checkpoint:
        with self._lock:
            cp = sign(self.keys.current(), self.chain, seq, head)
            self._append(cp)
            return cp

    def _append(self, cp: Checkpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        line = (json.dumps(cp.to_json(), sort_keys=True, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._last = cp

    def _newest_cached(self) -> Checkpoint | None:
        if not self._loaded:
            self._loaded = True
            mine = self.recent(limit=1)
            self._last = Checkpoint.from_json(mine[-1]) if mine else None
        return self._last

    # -- reading -----------------------------------------------------------------------------------------

    def lines(self) -> list[Line]:
        """Every line of the file (for `ehc audit verify`)."""
        try:
            return parse_lines(self.path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return []

    def recent(self, after: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest checkpoints of this chain (oldest first), at most `limit`, those after seq `after`
        only; reads the file from its end."""
        found: list[dict[str, Any]] = []
        for raw in _lines_from_end(self.path):
            try:
                data = json.loads(raw)
                cp = Checkpoint.from_json(data)
            except ValueError:
                continue
            if cp.chain != self.chain:
                continue
            if after is not None and cp.seq <= after:
                break
            found.append(cp.to_json())
            if len(found) >= limit:
                break
        found.reverse()
        return found


def _lines_from_end(path: Path, block: int = 8192) -> Any:
    """The lines of a file, last first, read backwards a block at a time."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        pos = os.fstat(fd).st_size
        rest = b""
        while pos > 0:
            size = min(block, pos)
            pos -= size
            os.lseek(fd, pos, os.SEEK_SET)
            data = os.read(fd, size) + rest
            parts = data.split(b"\n")
            rest = parts[0]
            for part in reversed(parts[1:]):
                if part.strip():
                    yield part.decode("utf-8", errors="replace")
        if rest.strip():
            yield rest.decode("utf-8", errors="replace")
    finally:
        os.close(fd)
