"""SM4 (GB/T 32907-2016): ECB vectors and SM4-GCM sealing, on cryptography and on the pure-Python fallback."""

import os
import time

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from app.crypto import CryptoError, _gcm, sm4_ecb_decrypt, sm4_ecb_encrypt, sm4_gcm_decrypt, sm4_gcm_encrypt
from app.crypto import sm4 as sm4_module

KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
CT = bytes.fromhex("681edf34d206965e86b3e94f536e4246")


def test_single_block_vector():
    assert sm4_ecb_encrypt(KEY, KEY) == CT
    assert sm4_ecb_decrypt(KEY, CT) == KEY


def test_million_iterations_vector():
    cipher = sm4_module.SM4(KEY)
    block = KEY
    started = time.perf_counter()
    for _ in range(1_000_000):
        block = cipher.encrypt(block)
    assert block.hex() == "595298c7c6fd271f0402f804c33d3f66"
    assert time.perf_counter() - started < 30


def test_ecb_is_blockwise_without_padding():
    data = KEY * 3
    assert sm4_ecb_encrypt(KEY, data) == CT * 3
    assert sm4_ecb_encrypt(KEY, b"") == b""


@pytest.mark.parametrize("length", [1, 15, 17, 31])
def test_ecb_rejects_partial_blocks(length):
    with pytest.raises(ValueError):
        sm4_ecb_encrypt(KEY, bytes(length))
    with pytest.raises(ValueError):
        sm4_ecb_decrypt(KEY, bytes(length))


def test_rejects_wrong_key_size():
    with pytest.raises(ValueError):
        sm4_ecb_encrypt(KEY[:15], KEY)
    with pytest.raises(ValueError):
        sm4_gcm_encrypt(KEY + b"x", b"data")


def test_gcm_round_trip_with_aad():
    blob = sm4_gcm_encrypt(KEY, b"110101200001010010", b"ctx")
    assert len(blob) == 12 + 18 + 16
    assert sm4_gcm_decrypt(KEY, blob, b"ctx") == b"110101200001010010"


def test_gcm_nonce_is_random():
    a, b = sm4_gcm_encrypt(KEY, b"same"), sm4_gcm_encrypt(KEY, b"same")
    assert a[:12] != b[:12] and a != b


def test_gcm_matches_cryptography_with_same_nonce():
    blob = sm4_gcm_encrypt(KEY, b"hello world", b"aad")
    enc = Cipher(algorithms.SM4(KEY), modes.GCM(blob[:12])).encryptor()
    enc.authenticate_additional_data(b"aad")
    assert blob[12:] == enc.update(b"hello world") + enc.finalize() + enc.tag


@pytest.mark.parametrize("position", [0, 11, 12, -17, -1])
def test_gcm_detects_tampering(position):
    blob = bytearray(sm4_gcm_encrypt(KEY, b"13800138000"))
    blob[position] ^= 0x01
    with pytest.raises(CryptoError):
        sm4_gcm_decrypt(KEY, bytes(blob))


def test_gcm_detects_wrong_aad_key_and_truncation():
    blob = sm4_gcm_encrypt(KEY, b"x", b"a")
    with pytest.raises(CryptoError):
        sm4_gcm_decrypt(KEY, blob, b"b")
    with pytest.raises(CryptoError):
        sm4_gcm_decrypt(bytes(16), blob, b"a")
    with pytest.raises(CryptoError):
        sm4_gcm_decrypt(KEY, blob[:27], b"a")


@pytest.mark.parametrize("length", [0, 1, 16, 33])
def test_pure_python_gcm_matches_openssl(length):
    nonce, plaintext, aad = os.urandom(12), os.urandom(length), os.urandom(length // 2)
    enc = Cipher(algorithms.SM4(KEY), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    expected = enc.update(plaintext) + enc.finalize()
    block = sm4_module.SM4(KEY).encrypt
    assert _gcm.encrypt(block, nonce, plaintext, aad) == (expected, enc.tag)
    assert _gcm.decrypt(block, nonce, expected, enc.tag, aad) == plaintext
    assert _gcm.decrypt(block, nonce, expected, bytes(16), aad) is None


def test_fallback_without_cryptography(monkeypatch):
    sealed_by_openssl = sm4_gcm_encrypt(KEY, b"phone", b"k1")
    monkeypatch.setattr(sm4_module, "HAVE_CRYPTOGRAPHY", False)
    assert sm4_module.sm4_ecb_encrypt(KEY, KEY) == CT
    assert sm4_module.sm4_ecb_decrypt(KEY, CT) == KEY
    assert sm4_module.sm4_gcm_decrypt(KEY, sealed_by_openssl, b"k1") == b"phone"
    sealed_by_python = sm4_module.sm4_gcm_encrypt(KEY, b"phone", b"k1")
    with pytest.raises(CryptoError):
        sm4_module.sm4_gcm_decrypt(KEY, sealed_by_python, b"k2")
    monkeypatch.setattr(sm4_module, "HAVE_CRYPTOGRAPHY", True)
    assert sm4_gcm_decrypt(KEY, sealed_by_python, b"k1") == b"phone"
