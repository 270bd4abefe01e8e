"""SM3 (GB/T 32905-2016) and HMAC-SM3: standard vectors and agreement between independent paths."""

import importlib
import shutil
import subprocess

import pytest

from app.crypto import sm3, sm3_hmac

# the package re-exports the function sm3, which shadows the submodule's attribute name
sm3_module = importlib.import_module("app.crypto.sm3")


def test_sm3_abc_vector():
    assert sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


def test_sm3_64_byte_vector():
    assert sm3(b"abcd" * 16).hex() == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


def test_gmssl_fallback_matches_vectors():
    assert sm3_module._gmssl_sm3(b"abc") == sm3(b"abc")
    assert sm3_module._gmssl_sm3(b"abcd" * 16) == sm3(b"abcd" * 16)


@pytest.mark.parametrize("key", [b"", b"key", b"k" * 64, b"long key " * 20])
def test_hmac_matches_rfc2104_by_hand(key):
    data = b"message digest"
    assert len(sm3_hmac(key, data)) == 32
    assert sm3_hmac(key, data) == sm3_module.hmac_rfc2104(key, data)


def test_hmac_without_hashlib_sm3(monkeypatch):
    expected = sm3_hmac(b"key", b"data")
    monkeypatch.setattr(sm3_module, "HASHLIB_SM3", False)
    assert sm3_module.sm3_hmac(b"key", b"data") == expected
    assert sm3_module.sm3(b"abc").hex().startswith("66c7f0f4")


def test_hmac_depends_on_key_and_data():
    assert sm3_hmac(b"k1", b"x") != sm3_hmac(b"k2", b"x")
    assert sm3_hmac(b"k1", b"x") != sm3_hmac(b"k1", b"y")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_hmac_matches_openssl_command():
    out = subprocess.run(
        ["openssl", "mac", "-digest", "SM3", "-macopt", "hexkey:6b6579", "HMAC"],
        input=b"message digest", capture_output=True, check=True,
    ).stdout.decode().strip()
    assert sm3_hmac(b"key", b"message digest").hex() == out.lower()
