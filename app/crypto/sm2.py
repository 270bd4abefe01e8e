"""SM2 digital signatures (GB/T 32918.2-2016, GM/T 0003.2-2012) on the recommended curve sm2p256v1.

A signature is the raw 64 bytes r | s over e = SM3(ZA || M), where
ZA = SM3(ENTL || ID || a || b || xG || yG || xA || yA) (GB/T 32918.2 §5.5) and ID defaults to
"1234567812345678" (GM/T 0009). ZA and e are computed here; the curve arithmetic runs in the system OpenSSL 3
(app.crypto._openssl) or, when libcrypto cannot be loaded, in gmssl's pure-Python code (`backend_name()` says
which). OpenSSL key objects are built once per key and cached on the key object.

Key storage: `SM2PrivateKey.to_pem()` writes the unencrypted PKCS#8 "PRIVATE KEY" layout that
`openssl genpkey -algorithm SM2` writes (id-ecPublicKey with the sm2 curve OID, ECPrivateKey v1 with the
32-byte scalar and the public point); `from_pem()` reads exactly that layout. `to_bytes()`/`from_bytes()` give
the bare 32-byte scalar.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from typing import Any

from app.crypto import _openssl
from app.crypto.errors import CryptoError
from app.crypto.sm3 import sm3

# sm2p256v1, GB/T 32918.5-2016
P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

DEFAULT_UID = b"1234567812345678"
SIGNATURE_SIZE = 64

_CURVE_BYTES = b"".join(v.to_bytes(32, "big") for v in (A, B, GX, GY))


class _OpenSSLBackend:
    name = "openssl"

    def __init__(self) -> None:
        _openssl.load()

    def public_point(self, d: bytes) -> bytes:
        return _openssl.public_point(d)[1:]

    def private_handle(self, d: bytes, xy: bytes) -> Any:
        return _openssl.private_key(d, b"\x04" + xy)

    def public_handle(self, xy: bytes) -> Any:
        return _openssl.public_key(b"\x04" + xy)

    def sign_digest(self, handle: Any, e: bytes) -> bytes:
        return _openssl.sign_digest(handle, e)

    def verify_digest(self, handle: Any, e: bytes, signature: bytes) -> bool:
        return _openssl.verify_digest(handle, e, signature)


class _GmsslBackend:
    """gmssl.sm2.CryptSM2 with our own nonces (gmssl draws k from `random`, which is not a CSPRNG)."""

    name = "gmssl"

    @staticmethod
    def _crypt(d: bytes | None, xy: bytes) -> Any:
        from gmssl.sm2 import CryptSM2

        crypt = CryptSM2(private_key=d.hex() if d else None, public_key="")
        # Set after construction: the constructor strips a leading "04" with str.lstrip("04"), which would also
        # eat the leading 0 and 4 digits of an x that starts with the byte 04 (one key in 256).
        crypt.public_key = xy.hex()
        return crypt

    def public_point(self, d: bytes) -> bytes:
        crypt = self._crypt(d, b"")
        return bytes.fromhex(crypt._kg(int.from_bytes(d, "big"), crypt.ecc_table["g"]))

    def private_handle(self, d: bytes, xy: bytes) -> Any:
        return self._crypt(d, xy)

    def public_handle(self, xy: bytes) -> Any:
        return self._crypt(None, xy)

    def sign_digest(self, handle: Any, e: bytes) -> bytes:
        while True:  # gmssl returns None for the rare r = 0 or r + k = n: draw another k
            sig = handle.sign(e, "%064x" % (secrets.randbelow(N - 1) + 1))
            if sig:
                return bytes.fromhex(sig)

    def verify_digest(self, handle: Any, e: bytes, signature: bytes) -> bool:
        try:
            return bool(handle.verify(signature.hex(), e))
        except (TypeError, ValueError):
            return False


def _pick_backend() -> _OpenSSLBackend | _GmsslBackend:
    try:
        return _OpenSSLBackend()
    except (OSError, AttributeError):  # no libcrypto 3, or one missing a symbol we bind
        return _GmsslBackend()


_BACKEND = _pick_backend()


def backend_name() -> str:
    """"openssl" when libcrypto 3 does the curve arithmetic, "gmssl" for the pure-Python fallback."""
    return _BACKEND.name


def _int32(b: bytes) -> int:
    return int.from_bytes(b, "big")


class SM2PublicKey:
    """A point on sm2p256v1; verifies signatures. Immutable; safe to share between threads."""

    __slots__ = ("_xy", "_handle", "_za")

    def __init__(self, xy: bytes) -> None:
        if len(xy) != 64:
            raise ValueError("an SM2 point is 64 bytes x | y")
        x, y = _int32(xy[:32]), _int32(xy[32:])
        if not (x < P and y < P) or (y * y - (x * x * x + A * x + B)) % P:
            raise ValueError("not a point on the SM2 curve")
        self._xy = xy
        self._handle: Any = None
        self._za: dict[bytes, bytes] = {}

    @classmethod
    def from_xy(cls, x: bytes, y: bytes) -> SM2PublicKey:
        """From the 32-byte big-endian coordinates; ValueError when the point is not on the curve."""
        if len(x) != 32 or len(y) != 32:
            raise ValueError("SM2 coordinates are 32 bytes each")
        return cls(x + y)

    @classmethod
    def from_bytes(cls, data: bytes) -> SM2PublicKey:
        """From the 65-byte uncompressed form 04 | x | y."""
        if len(data) != 65 or data[0] != 4:
            raise ValueError("expected an uncompressed SM2 point: 04 | x | y")
        return cls(data[1:])

    @property
    def x(self) -> bytes:
        return self._xy[:32]

    @property
    def y(self) -> bytes:
        return self._xy[32:]

    def to_bytes(self) -> bytes:
        return b"\x04" + self._xy

    def za(self, uid: bytes = DEFAULT_UID) -> bytes:
        """ZA of GB/T 32918.2 §5.5 for this key and user ID (cached)."""
        cached = self._za.get(uid)
        if cached is None:
            bits = len(uid) * 8
            if bits > 0xFFFF:
                raise ValueError("SM2 user ID longer than 8191 bytes")
            cached = sm3(bits.to_bytes(2, "big") + uid + _CURVE_BYTES + self._xy)
            self._za[uid] = cached
        return cached

    def digest(self, message: bytes, uid: bytes = DEFAULT_UID) -> bytes:
        """e = SM3(ZA || M), the value that is actually signed."""
        return sm3(self.za(uid) + message)

    def _backend_handle(self) -> Any:
        if self._handle is None:  # a race only builds the same object twice
            self._handle = _BACKEND.public_handle(self._xy)
        return self._handle

    def verify(self, message: bytes, signature: bytes, uid: bytes = DEFAULT_UID) -> bool:
        """True when signature (raw r|s) is valid for message; False for anything else, never raises."""
        if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_SIZE:
            return False
        r, s = _int32(signature[:32]), _int32(signature[32:])
        if not (0 < r < N and 0 < s < N):
            return False
        try:
            return _BACKEND.verify_digest(self._backend_handle(), self.digest(message, uid), bytes(signature))
        except (CryptoError, ValueError):
            return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SM2PublicKey) and other._xy == self._xy

    def __hash__(self) -> int:
        return hash(self._xy)

    def __repr__(self) -> str:
        return f"SM2PublicKey(x={self.x.hex()}, y={self.y.hex()})"


# PKCS#8 PrivateKeyInfo { 0, { id-ecPublicKey, sm2 }, OCTET STRING ECPrivateKey { 1, d, [1] pub } }
_PKCS8_HEAD = bytes.fromhex("308187020100301306072a8648ce3d020106082a811ccf5501822d046d306b0201010420")
_PKCS8_MID = bytes.fromhex("a144034200")
_PKCS8_LEN = len(_PKCS8_HEAD) + 32 + len(_PKCS8_MID) + 65
_PEM_BEGIN, _PEM_END = "-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----"


class SM2PrivateKey:
    """An SM2 private scalar d in [1, n-2] with its public key; signs messages."""

    __slots__ = ("_d", "_public", "_handle")

    def __init__(self, d: bytes) -> None:
        if len(d) != 32 or not 1 <= _int32(d) <= N - 2:
            raise ValueError("SM2 private key must be 32 bytes in [1, n-2]")
        self._d = bytes(d)
        self._public = SM2PublicKey(_BACKEND.public_point(self._d))
        self._handle = _BACKEND.private_handle(self._d, self._public._xy)

    @classmethod
    def generate(cls) -> SM2PrivateKey:
        return cls((secrets.randbelow(N - 2) + 1).to_bytes(32, "big"))

    @classmethod
    def from_bytes(cls, d: bytes) -> SM2PrivateKey:
        return cls(d)

    def to_bytes(self) -> bytes:
        return self._d

    @property
    def public_key(self) -> SM2PublicKey:
        return self._public

    def sign(self, message: bytes, uid: bytes = DEFAULT_UID) -> bytes:
        """The 64-byte r|s signature of message (random nonce)."""
        return _BACKEND.sign_digest(self._handle, self._public.digest(message, uid))

    def to_pem(self) -> str:
        der = _PKCS8_HEAD + self._d + _PKCS8_MID + self._public.to_bytes()
        body = base64.b64encode(der).decode()
        lines = [body[i: i + 64] for i in range(0, len(body), 64)]
        return "\n".join([_PEM_BEGIN, *lines, _PEM_END, ""])

    @classmethod
    def from_pem(cls, pem: str | bytes) -> SM2PrivateKey:
        """Read the PKCS#8 layout written by to_pem() and by `openssl genpkey -algorithm SM2`."""
        text = pem.decode() if isinstance(pem, bytes) else pem
        lines = [ln.strip() for ln in text.strip().splitlines()]
        if len(lines) < 3 or lines[0] != _PEM_BEGIN or lines[-1] != _PEM_END:
            raise ValueError("not an unencrypted PKCS#8 PEM private key")
        try:
            der = base64.b64decode("".join(lines[1:-1]), validate=True)
        except binascii.Error as exc:
            raise ValueError("bad base64 in PEM") from exc
        mid = len(_PKCS8_HEAD) + 32
        if len(der) != _PKCS8_LEN or not der.startswith(_PKCS8_HEAD) or der[mid: mid + 5] != _PKCS8_MID:
            raise ValueError("not an SM2 PKCS#8 private key in the expected layout")
        key = cls(der[len(_PKCS8_HEAD): mid])
        if not hmac.compare_digest(key._public.to_bytes(), der[mid + 5:]):
            raise ValueError("PEM public key does not match the private key")
        return key

    def __repr__(self) -> str:  # never print d
        return f"SM2PrivateKey(public x={self._public.x.hex()[:16]}...)"


def _sign_with_k(key: SM2PrivateKey, message: bytes, k: bytes, uid: bytes = DEFAULT_UID) -> bytes:
    """Test-only: sign with a caller-chosen nonce k (pure Python via gmssl), to reproduce standard vectors.

    Never use it for real signatures: a repeated or predictable k reveals the private key.
    """
    e = key.public_key.digest(message, uid)
    sig = _GmsslBackend._crypt(key.to_bytes(), key.public_key._xy).sign(e, k.hex())
    if not sig:
        raise CryptoError("this k gives r = 0 or r + k = n")
    return bytes.fromhex(sig)
