"""The node's SM2 signing keys for QR tokens: current key, rotation, published public keys.

Keys live in one JSON file, EHC_DATA_DIR/keys/signing-keys.json (mode 0600), replaced atomically under an
flock so that `ehc keys rotate` and every server process agree; a process re-reads it when the file changes.

Lifetimes (unix seconds):
- a key signs while it is current: from nbf until it is retired by a rotation (or, unrotated, until
  USE_PERIOD has passed, when the next signature rotates it automatically);
- exp = the last moment a token it signed can still be valid: while current, nbf + USE_PERIOD +
  MAX_TOKEN_LIFETIME; once retired, retired-at + MAX_TOKEN_LIFETIME. A token's exp never exceeds its key's.
- /ehc/keys publishes every key whose exp has not passed, so terminals can verify offline until then.

kid: the node's province code, then 8 random characters of A-Z 0-9 (the token format of
docs/terminal-vendors.md allows 1-16).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import string
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.crypto import SM2PrivateKey, SM2PublicKey
from app.ehc.token import MAX_LIFETIME
from app.keyring import private_dir

USE_PERIOD = 365 * 86400
MAX_TOKEN_LIFETIME = max(MAX_LIFETIME.values())  # the longest static code (one year); dynamic ones 300 s
_KID_CHARS = string.ascii_uppercase + string.digits


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: SM2PrivateKey
    nbf: int
    exp: int
    province: str
    retired: int | None = None

    @property
    def public(self) -> SM2PublicKey:
        return self.private.public_key

    def jwk(self) -> dict[str, Any]:
        """The published form: {kid, kty EC, crv SM2, alg SM2SM3, x, y (base64url, 32 bytes), nbf, exp, province}."""
        pub = self.public
        return {"kid": self.kid, "kty": "EC", "crv": "SM2", "alg": "SM2SM3", "use": "sig",
                "x": b64url(pub.x), "y": b64url(pub.y), "nbf": self.nbf, "exp": self.exp,
                "province": self.province}

    def to_record(self) -> dict[str, Any]:
        return {"kid": self.kid, "d": self.private.to_bytes().hex(), "nbf": self.nbf, "exp": self.exp,
                "province": self.province, "retired": self.retired}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> SigningKey:
        return cls(rec["kid"], SM2PrivateKey(bytes.fromhex(rec["d"])), int(rec["nbf"]), int(rec["exp"]),
                   str(rec["province"]), rec.get("retired"))


class SigningKeys:
    """The key file of one node; thread-safe, shared by the web app and the CLI."""

    def __init__(self, path: Path, province: str) -> None:
        self.path = Path(path)
        self.province = province
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: list[SigningKey] = []

    # -- reading ---------------------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _refresh(self) -> list[SigningKey]:
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp is None:
                    keys: list[SigningKey] = []
                else:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    keys = [SigningKey.from_record(r) for r in data.get("keys", [])]
                self._keys, self._stamp = keys, stamp
        return self._keys

    def all(self) -> list[SigningKey]:
        return list(self._refresh())

    def get(self, kid: str) -> SigningKey | None:
        for key in self._refresh():
            if key.kid == kid:
                return key
        return None

    def current(self, now: int | None = None) -> SigningKey:
        """The key that signs now; created on first use, rotated when its use period is over."""
        now = int(time.time()) if now is None else now
        key = self._current_of(self._refresh())
        if key is None or now >= key.nbf + USE_PERIOD:
            key = self._modify(lambda keys: self._rotate_if_due(keys, now), now)
        return key

    def published(self, now: int | None = None) -> list[dict[str, Any]]:
        """Public keys still able to verify something (exp not passed), newest first."""
        now = int(time.time()) if now is None else now
        keys = [k for k in self._refresh() if k.exp > now]
        return [k.jwk() for k in sorted(keys, key=lambda k: k.nbf, reverse=True)]

    @staticmethod
    def _current_of(keys: list[SigningKey]) -> SigningKey | None:
        live = [k for k in keys if k.retired is None]
        return max(live, key=lambda k: k.nbf) if live else None

    # -- writing ---------------------------------------------------------------------------------------

    def rotate(self, now: int | None = None) -> SigningKey:
        """Make a new current key; the previous one retires and stays published until its exp."""
        now = int(time.time()) if now is None else now
        return self._modify(lambda keys: self._rotated(keys, now), now)

    def _rotate_if_due(self, keys: list[SigningKey], now: int) -> tuple[list[SigningKey], SigningKey]:
        key = self._current_of(keys)
        if key is not None and now < key.nbf + USE_PERIOD:
            return keys, key  # another process did it while we waited for the lock
        return self._rotated(keys, now)

    def _rotated(self, keys: list[SigningKey], now: int) -> tuple[list[SigningKey], SigningKey]:
        out = []
        for k in keys:
            if k.retired is None:
                k = SigningKey(k.kid, k.private, k.nbf, min(k.exp, now + MAX_TOKEN_LIFETIME), k.province, now)
            if k.exp > now - 86400:  # drop keys dead for a day: nothing they signed can verify
                out.append(k)
        taken = {k.kid for k in out}
        kid = self._new_kid(taken)
        new = SigningKey(kid, SM2PrivateKey.generate(), now, now + USE_PERIOD + MAX_TOKEN_LIFETIME, self.province)
        out.append(new)
        return out, new

    def _new_kid(self, taken: set[str]) -> str:
        prefix = "".join(c for c in self.province.upper() if c in _KID_CHARS)[:8]
        while True:
            kid = prefix + "".join(secrets.choice(_KID_CHARS) for _ in range(8))
            if kid not in taken:
                return kid

    def _modify(self, change: Any, now: int) -> SigningKey:
        private_dir(self.path.parent)
        lock_path = self.path.with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._stamp = None  # re-read under the lock: another process may have rotated
            keys, result = change(self._refresh())
            self._write(keys)
            self._stamp = None
            self._refresh()
            return result
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _write(self, keys: list[SigningKey]) -> None:
        data = json.dumps({"keys": [k.to_record() for k in keys]}, indent=1).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=".signing-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise


def signing_keys_path(keys_dir: Path) -> Path:
    return Path(keys_dir) / "signing-keys.json"
