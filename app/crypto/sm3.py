"""SM3 hash (GB/T 32905-2016) and HMAC-SM3 (RFC 2104 with SM3, 64-byte block).

hashlib provides SM3 when Python's OpenSSL does (it does on this platform); otherwise gmssl's pure-Python
SM3 is used, and HMAC is then built by hand exactly as RFC 2104 §2 describes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

BLOCK_SIZE = 64
DIGEST_SIZE = 32


def _hashlib_has_sm3() -> bool:
    try:
        hashlib.new("sm3", b"")
    except ValueError:
        return False
    return True


HASHLIB_SM3 = _hashlib_has_sm3()


def _gmssl_sm3(data: bytes) -> bytes:
    from gmssl import sm3 as gm

    return bytes.fromhex(gm.sm3_hash(list(data)))


def sm3(data: bytes) -> bytes:
    """The 32-byte SM3 digest of data."""
    if HASHLIB_SM3:
        return hashlib.new("sm3", data).digest()
    return _gmssl_sm3(data)


def hmac_rfc2104(key: bytes, data: bytes, h: Callable[[bytes], bytes] = sm3) -> bytes:
    """HMAC spelled out (RFC 2104 §2): H(K ^ opad, H(K ^ ipad, text)); the path used without hashlib SM3."""
    if len(key) > BLOCK_SIZE:
        key = h(key)
    key = key.ljust(BLOCK_SIZE, b"\x00")
    inner = h(bytes(b ^ 0x36 for b in key) + data)
    return h(bytes(b ^ 0x5C for b in key) + inner)


def sm3_hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-SM3 of data under key (32 bytes)."""
    if HASHLIB_SM3:
        return hmac.new(key, data, "sm3").digest()
    return hmac_rfc2104(key, data)
