"""The platform's symmetric keys, loaded once per process and created on first use.

- master-index key, 32 bytes: keys/index.key (Settings.index_key_file); 主索引ID = SM3-HMAC.
- card root key, 16 bytes: keys/card-root.key (Settings.card_root_key_file); SM4 card ID diversification.
- field encryption key, 16 bytes, then the blind-index key, 32 bytes: keys/field.key (Settings.field_key_file);
  SM4-GCM of ID numbers and phones, and SM3-HMAC exact-match indexes (the MPI's claims use the latter).

Files hold the raw bytes (hex text of the same length is also read, for keys pasted by an operator) and are
created with mode 0600 by whichever process needs them first: written to a temporary file and linked into
place, so two gunicorn workers starting together never see half a key and agree on one. Nodes that must
compute the same card IDs (a province and the national node) share the index and root keys.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.crypto import FieldCipher, sm3_hmac

INDEX_KEY_SIZE = 32
CARD_ROOT_KEY_SIZE = 16
FIELD_KEY_SIZE = 16
BLIND_KEY_SIZE = 32


class KeyFileError(RuntimeError):
    """A key file exists but does not hold a key of the expected size."""


@dataclass(frozen=True)
class Keyring:
    index_key: bytes
    card_root_key: bytes
    field_key: bytes
    blind_key: bytes
    keys_dir: Path
    _cipher: list[FieldCipher] = field(default_factory=list, repr=False, compare=False)

    def blind(self, text: str) -> str:
        """Hex SM3-HMAC of the exact text under the blind-index key (no normalisation: callers do it)."""
        return sm3_hmac(self.blind_key, text.encode("utf-8")).hex()

    def field_cipher(self) -> FieldCipher:
        if not self._cipher:
            self._cipher.append(FieldCipher(self.field_key, self.blind_key))
        return self._cipher[0]

    def __repr__(self) -> str:  # never print key material
        return f"Keyring(keys_dir={str(self.keys_dir)!r})"


def keys_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "keys"


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter (0700), created with its parents if need be; an
    existing one is tightened (EHC_DATA_DIR holds the keys and the embedded database)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except PermissionError:  # not ours (an operator's shared directory): leave it, the files stay 0600
        pass
    return path


def private_file(path: Path) -> None:
    """Tighten an existing file to 0600 (key files written by an older version or by hand)."""
    try:
        if path.exists() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except PermissionError:
        pass


def load_keyring(settings: Settings) -> Keyring:
    """The platform keys of these settings, creating any that do not exist yet. The data directory and the
    key directory are made 0700 and the key files 0600."""
    private_dir(settings.data_dir)
    kdir = private_dir(keys_dir(settings))
    index_key = load_or_create(settings.index_key_file or kdir / "index.key", INDEX_KEY_SIZE)
    root_key = load_or_create(settings.card_root_key_file or kdir / "card-root.key", CARD_ROOT_KEY_SIZE)
    both = load_or_create(settings.field_key_file or kdir / "field.key", FIELD_KEY_SIZE + BLIND_KEY_SIZE)
    return Keyring(index_key, root_key, both[:FIELD_KEY_SIZE], both[FIELD_KEY_SIZE:], kdir)


def keyring_for(services: Any) -> Keyring:
    """The process-wide keyring kept in Services.extensions (built on first use)."""
    ring = services.extensions.get("keyring")
    if ring is None:
        ring = services.extensions["keyring"] = load_keyring(services.settings)
    return ring


def load_or_create(path: Path, size: int) -> bytes:
    """Read a key of `size` bytes, or create it (random, mode 0600) when the file does not exist."""
    path = Path(path)
    if not path.exists():
        write_key_once(path, secrets.token_bytes(size))
    private_file(path)
    data = path.read_bytes()
    if len(data) == size:
        return data
    text = data.strip()
    if len(text) == 2 * size:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise KeyFileError(f"{path} must hold a {size}-byte key (raw, or {2 * size} hex characters)")


def write_key_once(path: Path, key: bytes) -> None:
    """Create a key file (0600, in a 0700 folder) atomically; when another process created it first, theirs is kept."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=".key-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process linked its key first: then theirs is the key
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
