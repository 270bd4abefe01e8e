"""Field-level encryption at rest with blind indexes: ID numbers and phone numbers.

A value is stored as the text "<key_id>:<base64url, no padding, of SM4-GCM nonce | ciphertext | tag>"
(the key id is also the GCM associated data, so a ciphertext cannot be relabelled to another key), and
searched through `blind_index`: the hex HMAC-SM3 of the normalised value under a separate index key.
Rotating the encryption key: construct with the new key and `old_keys={"k1": old_key}`; old texts still
decrypt, and `reencrypt` moves one to the current key. The index key cannot rotate without re-indexing.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

from app.crypto.errors import CryptoError
from app.crypto.sm3 import sm3_hmac
from app.crypto.sm4 import KEY_SIZE, sm4_gcm_decrypt, sm4_gcm_encrypt

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_DROP = re.compile(r"[\s\-]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def normalise(value: str) -> str:
    """The generic normal form that blind indexes hash: NFKC (full-width digits become ASCII), without
    whitespace or hyphens, upper case (so a resident ID ending in x matches X). Callers do any
    document-specific normalisation (15- to 18-digit IDs, +86 phone prefixes) before this."""
    return _DROP.sub("", unicodedata.normalize("NFKC", value)).upper()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not _B64URL.fullmatch(text):  # urlsafe_b64decode would silently skip stray characters
        raise CryptoError("encrypted field is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("encrypted field is not base64url") from exc


class FieldCipher:
    """Encrypts and blind-indexes string fields with SM4-GCM and HMAC-SM3."""

    def __init__(
        self,
        enc_key: bytes,
        index_key: bytes,
        key_id: str = "k1",
        old_keys: dict[str, bytes] | None = None,
    ) -> None:
        keys = {**(old_keys or {}), key_id: enc_key}
        for kid, key in keys.items():
            if not _KEY_ID.fullmatch(kid):
                raise ValueError(f"key id {kid!r} must be 1-32 of A-Z a-z 0-9 _ -")
            if len(key) != KEY_SIZE:
                raise ValueError(f"encryption key {kid!r} must be {KEY_SIZE} bytes")
        if len(index_key) != 32:
            raise ValueError("index key must be 32 bytes")
        self._keys = keys
        self._index_key = index_key
        self.key_id = key_id

    def encrypt(self, value: str) -> str:
        """Encrypt under the current key (a fresh nonce each time, so equal values differ)."""
        blob = sm4_gcm_encrypt(self._keys[self.key_id], value.encode("utf-8"), self.key_id.encode("ascii"))
        return f"{self.key_id}:{_b64url(blob)}"

    def key_id_of(self, text: str) -> str:
        """The key id a stored text was encrypted under."""
        kid, sep, _ = text.partition(":")
        if not sep:
            raise CryptoError("encrypted field has no key id")
        return kid

    def decrypt(self, text: str) -> str:
        """The plaintext; CryptoError for an unknown key id, bad encoding or any tampering."""
        kid = self.key_id_of(text)
        key = self._keys.get(kid)
        if key is None:
            raise CryptoError(f"unknown field-encryption key id {kid!r}")
        plaintext = sm4_gcm_decrypt(key, _unb64url(text[len(kid) + 1:]), kid.encode("ascii"))
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError as exc:  # only reachable with a forged-but-authentic blob, i.e. never
            raise CryptoError("decrypted field is not UTF-8") from exc

    def reencrypt(self, text: str) -> str:
        """The same value under the current key (unchanged text when it already is)."""
        if self.key_id_of(text) == self.key_id:
            return text
        return self.encrypt(self.decrypt(text))

    def blind_index(self, value: str) -> str:
        """Hex HMAC-SM3 of the normalised value: equal for equal values, meaningless without the key."""
        return sm3_hmac(self._index_key, normalise(value).encode("utf-8")).hex()
