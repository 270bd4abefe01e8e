"""SM2 on the system OpenSSL 3 (libcrypto.so.3) through ctypes: the compiled backend of app.crypto.sm2.

Only the elliptic-curve work runs here. The caller hashes (e = SM3(ZA || M), GM/T 0003.2 §6.1) and hands
the 32-byte digest to EVP_PKEY_sign / EVP_PKEY_verify, which for an SM2 key compute exactly the SM2
signature of that digest (OpenSSL's sm2sig_sign takes a pre-hashed input). Keys are built once with
EVP_PKEY_fromdata and kept in a `Pkey` handle; a sign or verify call only makes a short-lived EVP_PKEY_CTX,
so one handle can be shared by threads. Signatures leave OpenSSL as DER ECDSA-Sig-Value and are converted
to the raw 64-byte r|s here.

`load()` raises OSError when no usable libcrypto 3 is found; app.crypto.sm2 then falls back to gmssl.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import POINTER, byref, c_char_p, c_int, c_size_t, c_ulong, c_void_p

from app.crypto.errors import CryptoError

# OpenSSL 3.0 include/openssl/core_dispatch.h / evp.h
_SELECT_PRIVATE = 0x01
_SELECT_PUBLIC = 0x02
_SELECT_ALL_PARAMETERS = 0x84
EVP_PKEY_PUBLIC_KEY = _SELECT_ALL_PARAMETERS | _SELECT_PUBLIC
EVP_PKEY_KEYPAIR = EVP_PKEY_PUBLIC_KEY | _SELECT_PRIVATE
_NID_SM2 = 1172  # obj_mac.h
_UNCOMPRESSED = 4  # POINT_CONVERSION_UNCOMPRESSED

_lib: ctypes.CDLL | None = None


def _bind(lib: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> None:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


def load() -> ctypes.CDLL:
    """Load libcrypto 3 once and declare the prototypes we use."""
    global _lib
    if _lib is not None:
        return _lib
    names = ["libcrypto.so.3", ctypes.util.find_library("crypto") or "", "libcrypto.3.dylib"]
    lib = None
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise OSError("libcrypto not found")
    _bind(lib, "OpenSSL_version_num", c_ulong)
    if lib.OpenSSL_version_num() < 0x30000000:
        raise OSError("libcrypto is older than OpenSSL 3.0")
    vp = c_void_p
    _bind(lib, "ERR_clear_error", None)
    _bind(lib, "BN_bin2bn", vp, c_char_p, c_int, vp)
    _bind(lib, "BN_clear_free", None, vp)
    _bind(lib, "OSSL_PARAM_BLD_new", vp)
    _bind(lib, "OSSL_PARAM_BLD_free", None, vp)
    _bind(lib, "OSSL_PARAM_BLD_push_utf8_string", c_int, vp, c_char_p, c_char_p, c_size_t)
    _bind(lib, "OSSL_PARAM_BLD_push_BN", c_int, vp, c_char_p, vp)
    _bind(lib, "OSSL_PARAM_BLD_push_octet_string", c_int, vp, c_char_p, c_char_p, c_size_t)
    _bind(lib, "OSSL_PARAM_BLD_to_param", vp, vp)
    _bind(lib, "OSSL_PARAM_free", None, vp)
    _bind(lib, "EVP_PKEY_CTX_new_from_name", vp, vp, c_char_p, c_char_p)
    _bind(lib, "EVP_PKEY_CTX_new_from_pkey", vp, vp, vp, c_char_p)
    _bind(lib, "EVP_PKEY_CTX_free", None, vp)
    _bind(lib, "EVP_PKEY_fromdata_init", c_int, vp)
    _bind(lib, "EVP_PKEY_fromdata", c_int, vp, POINTER(vp), c_int, vp)
    _bind(lib, "EVP_PKEY_free", None, vp)
    _bind(lib, "EC_GROUP_new_by_curve_name", vp, c_int)
    _bind(lib, "EC_GROUP_free", None, vp)
    _bind(lib, "EC_POINT_new", vp, vp)
    _bind(lib, "EC_POINT_free", None, vp)
    _bind(lib, "EC_POINT_mul", c_int, vp, vp, vp, vp, vp, vp)
    _bind(lib, "EC_POINT_point2oct", c_size_t, vp, vp, c_int, c_char_p, c_size_t, vp)
    _bind(lib, "EVP_PKEY_sign_init", c_int, vp)
    _bind(lib, "EVP_PKEY_sign", c_int, vp, c_char_p, POINTER(c_size_t), c_char_p, c_size_t)
    _bind(lib, "EVP_PKEY_verify_init", c_int, vp)
    _bind(lib, "EVP_PKEY_verify", c_int, vp, c_char_p, c_size_t, c_char_p, c_size_t)
    _lib = lib
    return lib


class Pkey:
    """An owned EVP_PKEY* (SM2), freed with the object."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __del__(self) -> None:
        if _lib is not None and self.ptr:
            _lib.EVP_PKEY_free(self.ptr)
            self.ptr = 0


def _fail(what: str) -> CryptoError:
    assert _lib is not None
    _lib.ERR_clear_error()  # the queue is per thread and would otherwise grow
    return CryptoError(f"OpenSSL: {what} failed")


def _fromdata(selection: int, d: bytes | None, point: bytes) -> Pkey:
    """EVP_PKEY_fromdata for the SM2 group from an optional private scalar and an uncompressed point."""
    lib = load()
    bld = lib.OSSL_PARAM_BLD_new()
    bn = params = ctx = None
    try:
        ok = lib.OSSL_PARAM_BLD_push_utf8_string(bld, b"group", b"SM2", 3)
        ok = ok and lib.OSSL_PARAM_BLD_push_octet_string(bld, b"pub", point, len(point))
        if d is not None:
            bn = lib.BN_bin2bn(d, len(d), None)
            ok = ok and bn and lib.OSSL_PARAM_BLD_push_BN(bld, b"priv", bn)
        params = ok and lib.OSSL_PARAM_BLD_to_param(bld)
        ctx = lib.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
        pkey = c_void_p()
        if not (params and ctx and lib.EVP_PKEY_fromdata_init(ctx) == 1
                and lib.EVP_PKEY_fromdata(ctx, byref(pkey), selection, params) == 1 and pkey.value):
            raise _fail("EVP_PKEY_fromdata")
        return Pkey(pkey.value)
    finally:
        if ctx:
            lib.EVP_PKEY_CTX_free(ctx)
        if params:
            lib.OSSL_PARAM_free(params)
        if bn:
            lib.BN_clear_free(bn)
        lib.OSSL_PARAM_BLD_free(bld)


def private_key(d: bytes, point: bytes) -> Pkey:
    """An SM2 key pair from the 32-byte scalar and its 65-byte uncompressed public point."""
    return _fromdata(EVP_PKEY_KEYPAIR, d, point)


def public_key(point: bytes) -> Pkey:
    """An SM2 public key from the 65-byte uncompressed point (OpenSSL checks it is on the curve)."""
    return _fromdata(EVP_PKEY_PUBLIC_KEY, None, point)


def public_point(d: bytes) -> bytes:
    """The 65-byte uncompressed point d*G.

    EVP_PKEY_fromdata in OpenSSL 3.0 does not derive a missing public key, so this uses the (deprecated
    but exported) EC_POINT API; a generator-only EC_POINT_mul runs the constant-time Montgomery ladder.
    """
    lib = load()
    group = lib.EC_GROUP_new_by_curve_name(_NID_SM2)
    point = lib.EC_POINT_new(group) if group else None
    bn = lib.BN_bin2bn(d, len(d), None)
    try:
        buf = ctypes.create_string_buffer(65)
        if not (point and bn and lib.EC_POINT_mul(group, point, bn, None, None, None) == 1
                and lib.EC_POINT_point2oct(group, point, _UNCOMPRESSED, buf, 65, None) == 65):
            raise _fail("EC_POINT_mul")
        return buf.raw
    finally:
        if point:
            lib.EC_POINT_free(point)
        if group:
            lib.EC_GROUP_free(group)
        if bn:
            lib.BN_clear_free(bn)


def sign_digest(key: Pkey, e: bytes) -> bytes:
    """SM2-sign the 32-byte digest e; returns raw r|s (64 bytes)."""
    lib = load()
    ctx = lib.EVP_PKEY_CTX_new_from_pkey(None, key.ptr, None)
    try:
        sig = ctypes.create_string_buffer(80)
        n = c_size_t(80)
        if not (ctx and lib.EVP_PKEY_sign_init(ctx) == 1
                and lib.EVP_PKEY_sign(ctx, sig, byref(n), e, len(e)) == 1):
            raise _fail("EVP_PKEY_sign")
        return der_to_raw(sig.raw[: n.value])
    finally:
        if ctx:
            lib.EVP_PKEY_CTX_free(ctx)


def verify_digest(key: Pkey, e: bytes, signature: bytes) -> bool:
    """Check a raw r|s signature over the digest e; False for any failure."""
    lib = load()
    der = raw_to_der(signature)
    ctx = lib.EVP_PKEY_CTX_new_from_pkey(None, key.ptr, None)
    try:
        ok = bool(ctx) and lib.EVP_PKEY_verify_init(ctx) == 1 and lib.EVP_PKEY_verify(
            ctx, der, len(der), e, len(e)) == 1
        if not ok:
            lib.ERR_clear_error()
        return ok
    finally:
        if ctx:
            lib.EVP_PKEY_CTX_free(ctx)


def _der_int(value: bytes) -> bytes:
    body = value.lstrip(b"\x00") or b"\x00"
    if body[0] & 0x80:  # keep INTEGER positive
        body = b"\x00" + body
    return b"\x02" + bytes([len(body)]) + body


def raw_to_der(signature: bytes) -> bytes:
    """r|s (32 + 32 bytes) to the minimal DER SEQUENCE { INTEGER r, INTEGER s } OpenSSL insists on."""
    body = _der_int(signature[:32]) + _der_int(signature[32:])
    return b"\x30" + bytes([len(body)]) + body


def der_to_raw(der: bytes) -> bytes:
    """The DER ECDSA-Sig-Value that OpenSSL produces, back to r|s; short-form lengths only (all fit)."""
    if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2:
        raise CryptoError("unexpected signature encoding from OpenSSL")
    out = b""
    pos = 2
    for _ in range(2):
        if der[pos] != 0x02:
            raise CryptoError("unexpected signature encoding from OpenSSL")
        length = der[pos + 1]
        value = der[pos + 2: pos + 2 + length].lstrip(b"\x00")
        if len(value) > 32:
            raise CryptoError("unexpected signature encoding from OpenSSL")
        out += value.rjust(32, b"\x00")
        pos += 2 + length
    return out
