"""GCM (NIST SP 800-38D) over any 128-bit block function, 96-bit nonces and 128-bit tags only.

Used for SM4-GCM only when the `cryptography` package is missing (app.crypto.sm4 falls back to gmssl's
pure-Python SM4, which has no GCM). Slow, but it produces the same bytes as OpenSSL's SM4-GCM.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

Block = Callable[[bytes], bytes]
_R = 0xE1 << 120  # the reduction polynomial x^128 + x^7 + x^2 + x + 1, bit-reflected (§6.3)


def _mult(x: int, y: int) -> int:
    """X • Y in GF(2^128) as SP 800-38D Algorithm 1 defines it (bit 0 is the most significant)."""
    z = 0
    v = y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _ghash(h: int, data: bytes) -> int:
    y = 0
    for i in range(0, len(data), 16):
        y = _mult(y ^ int.from_bytes(data[i: i + 16].ljust(16, b"\x00"), "big"), h)
    return y


def _gctr(encrypt_block: Block, counter: int, data: bytes) -> bytes:
    out = bytearray()
    for i in range(0, len(data), 16):
        stream = encrypt_block(counter.to_bytes(16, "big"))
        out += bytes(a ^ b for a, b in zip(data[i: i + 16], stream, strict=False))
        # inc32: only the low 32 bits count up (§6.2)
        counter = (counter & ~0xFFFFFFFF) | ((counter + 1) & 0xFFFFFFFF)
    return bytes(out)


def _tag(encrypt_block: Block, j0: int, aad: bytes, ciphertext: bytes) -> bytes:
    h = int.from_bytes(encrypt_block(bytes(16)), "big")

    def padded(b: bytes) -> bytes:
        return b + bytes(-len(b) % 16)

    lengths = (len(aad) * 8).to_bytes(8, "big") + (len(ciphertext) * 8).to_bytes(8, "big")
    s = _ghash(h, padded(aad) + padded(ciphertext) + lengths)
    return _gctr(encrypt_block, j0, s.to_bytes(16, "big"))


def encrypt(encrypt_block: Block, nonce: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """(ciphertext, tag) for a 12-byte nonce."""
    j0 = int.from_bytes(nonce + b"\x00\x00\x00\x01", "big")
    ciphertext = _gctr(encrypt_block, j0 + 1, plaintext)
    return ciphertext, _tag(encrypt_block, j0, aad, ciphertext)


def decrypt(encrypt_block: Block, nonce: bytes, ciphertext: bytes, tag: bytes, aad: bytes) -> bytes | None:
    """The plaintext, or None when the tag does not match."""
    j0 = int.from_bytes(nonce + b"\x00\x00\x00\x01", "big")
    if not hmac.compare_digest(_tag(encrypt_block, j0, aad, ciphertext), tag):
        return None
    return _gctr(encrypt_block, j0 + 1, ciphertext)
