"""SM4 block cipher (GB/T 32907-2016): raw ECB (no padding) and GCM (NIST SP 800-38D, as in RFC 8998).

The `cryptography` package (OpenSSL's SM4) does the work; without it gmssl's pure-Python SM4 is used and
GCM is assembled in app.crypto._gcm. The GCM blob format is nonce(12) | ciphertext | tag(16).
"""

from __future__ import annotations

import os

from app.crypto import _gcm
from app.crypto.errors import CryptoError

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    HAVE_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - the dependency is declared; this is the degraded path
    HAVE_CRYPTOGRAPHY = False

KEY_SIZE = 16
BLOCK_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"SM4 key must be {KEY_SIZE} bytes, got {len(key)}")


class SM4:
    """SM4-ECB under one key, without padding. Build it once to encrypt many blocks; not thread-safe."""

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        if HAVE_CRYPTOGRAPHY:
            cipher = Cipher(algorithms.SM4(key), modes.ECB())
            self._enc = cipher.encryptor().update
            self._dec = cipher.decryptor().update
        else:
            from gmssl.sm4 import SM4_DECRYPT, SM4_ENCRYPT, CryptSM4

            no_padding = 2  # neither gmssl.sm4.PKCS7 (0) nor ZERO (1)
            enc, dec = CryptSM4(padding_mode=no_padding), CryptSM4(padding_mode=no_padding)
            enc.set_key(key, SM4_ENCRYPT)
            dec.set_key(key, SM4_DECRYPT)
            self._enc, self._dec = enc.crypt_ecb, dec.crypt_ecb

    @staticmethod
    def _check(data: bytes) -> None:
        if len(data) % BLOCK_SIZE:
            raise ValueError(f"SM4-ECB data must be a multiple of {BLOCK_SIZE} bytes, got {len(data)}")

    def encrypt(self, data: bytes) -> bytes:
        self._check(data)
        return bytes(self._enc(data))

    def decrypt(self, data: bytes) -> bytes:
        self._check(data)
        return bytes(self._dec(data))


def sm4_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """SM4-ECB encryption; len(data) must be a multiple of 16 (ValueError otherwise)."""
    return SM4(key).encrypt(data)


def sm4_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """SM4-ECB decryption; len(data) must be a multiple of 16 (ValueError otherwise)."""
    return SM4(key).decrypt(data)


def sm4_gcm_encrypt(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """SM4-GCM with a fresh random 96-bit nonce; returns nonce | ciphertext | tag."""
    _check_key(key)
    nonce = os.urandom(NONCE_SIZE)
    if HAVE_CRYPTOGRAPHY:
        enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        ciphertext = enc.update(plaintext) + enc.finalize()
        return nonce + ciphertext + enc.tag
    ciphertext, tag = _gcm.encrypt(SM4(key).encrypt, nonce, plaintext, aad)
    return nonce + ciphertext + tag


def sm4_gcm_decrypt(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Open a blob made by sm4_gcm_encrypt; CryptoError when it is truncated, tampered or the key is wrong."""
    _check_key(key)
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise CryptoError("SM4-GCM blob too short")
    nonce, ciphertext, tag = blob[:NONCE_SIZE], blob[NONCE_SIZE:-TAG_SIZE], blob[-TAG_SIZE:]
    if HAVE_CRYPTOGRAPHY:
        dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        try:
            return dec.update(ciphertext) + dec.finalize()
        except InvalidTag:
            raise CryptoError("SM4-GCM authentication failed") from None
    plaintext = _gcm.decrypt(SM4(key).encrypt, nonce, ciphertext, tag, aad)
    if plaintext is None:
        raise CryptoError("SM4-GCM authentication failed")
    return plaintext
