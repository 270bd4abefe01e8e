"""SM2 signatures (GB/T 32918.2; GM/T 0003 Annex A vector), the OpenSSL backend, gmssl interoperability."""

import base64
import shutil
import subprocess

import pytest
from gmssl.sm2 import CryptSM2

from app.crypto import SM2PrivateKey, SM2PublicKey, _openssl, backend_name, sm2

D = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
X = bytes.fromhex("09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020")
Y = bytes.fromhex("CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13")
MSG = b"message digest"
ZA = "B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3"
E = "F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640"
K = bytes.fromhex("59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21")
R = "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
S = "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"

OPENSSL_CLI = shutil.which("openssl") is not None


@pytest.fixture(scope="module")
def key():
    return SM2PrivateKey.from_bytes(D)


def test_backend_is_openssl_here():
    _openssl.load()  # libcrypto.so.3 is part of the target platform
    assert backend_name() == "openssl"


def test_public_key_of_vector(key):
    assert key.public_key.x == X and key.public_key.y == Y
    assert key.public_key.to_bytes() == b"\x04" + X + Y


def test_za_and_e_of_vector(key):
    assert key.public_key.za().hex().upper() == ZA
    assert key.public_key.digest(MSG).hex().upper() == E


def test_signature_with_fixed_k_reproduces_vector(key):
    assert sm2._sign_with_k(key, MSG, K).hex().upper() == R + S


def test_vector_signature_verifies(key):
    assert SM2PublicKey.from_xy(X, Y).verify(MSG, bytes.fromhex(R + S))


def test_sign_verify_round_trip(key):
    sig = key.sign(b"hello")
    assert len(sig) == 64
    assert key.public_key.verify(b"hello", sig)
    assert key.sign(b"hello") != sig  # random nonce


def test_custom_uid(key):
    sig = key.sign(b"hello", uid=b"ALICE123@YAHOO.COM")
    assert key.public_key.verify(b"hello", sig, uid=b"ALICE123@YAHOO.COM")
    assert not key.public_key.verify(b"hello", sig)


def test_bad_signatures_are_false_not_errors(key):
    pub = key.public_key
    sig = key.sign(b"hello")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    n = sm2.N.to_bytes(32, "big")
    for bad in [flipped, sig[:63], sig + b"\x00", b"", bytes(64), sig[:32] + n, n + sig[32:], b"\xff" * 64]:
        assert pub.verify(b"hello", bad) is False
    assert pub.verify(b"hellO", sig) is False
    assert SM2PrivateKey.generate().public_key.verify(b"hello", sig) is False
    assert pub.verify(b"hello", "not bytes") is False  # type: ignore[arg-type]


def test_invalid_keys_rejected():
    with pytest.raises(ValueError):
        SM2PublicKey.from_xy(X, bytes(32))
    with pytest.raises(ValueError):
        SM2PublicKey.from_xy(X[:31], Y)
    with pytest.raises(ValueError):
        SM2PublicKey.from_bytes(b"\x02" + X + Y)
    for d in [bytes(32), (sm2.N - 1).to_bytes(32, "big"), D[:31]]:
        with pytest.raises(ValueError):
            SM2PrivateKey.from_bytes(d)


def test_key_bytes_round_trip_and_repr(key):
    other = SM2PrivateKey.generate()
    assert SM2PrivateKey.from_bytes(other.to_bytes()).public_key == other.public_key
    assert SM2PublicKey.from_bytes(other.public_key.to_bytes()) == other.public_key
    assert D.hex() not in repr(key).lower()


def test_pem_round_trip(key):
    pem = key.to_pem()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert SM2PrivateKey.from_pem(pem).to_bytes() == D
    with pytest.raises(ValueError):
        SM2PrivateKey.from_pem(pem.replace("PRIVATE KEY", "PUBLIC KEY"))
    other_pub = SM2PrivateKey.generate().public_key.to_bytes()
    der = base64.b64decode("".join(pem.splitlines()[1:-1]))
    forged = base64.b64encode(der[:-65] + other_pub).decode()
    with pytest.raises(ValueError):
        SM2PrivateKey.from_pem(f"-----BEGIN PRIVATE KEY-----\n{forged}\n-----END PRIVATE KEY-----\n")


@pytest.mark.skipif(not OPENSSL_CLI, reason="openssl command not installed")
def test_pem_interoperates_with_openssl_command(tmp_path, key):
    pem_file = tmp_path / "k.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "SM2", "-out", str(pem_file)], check=True)
    loaded = SM2PrivateKey.from_pem(pem_file.read_text())
    spki = subprocess.run(["openssl", "pkey", "-in", str(pem_file), "-pubout", "-outform", "DER"],
                          capture_output=True, check=True).stdout
    assert spki[-65:] == loaded.public_key.to_bytes()
    # and OpenSSL reads ours
    ours = tmp_path / "ours.pem"
    ours.write_text(key.to_pem())
    spki = subprocess.run(["openssl", "pkey", "-in", str(ours), "-pubout", "-outform", "DER"],
                          capture_output=True, check=True).stdout
    assert spki[-65:] == key.public_key.to_bytes()


@pytest.mark.skipif(not OPENSSL_CLI, reason="openssl command not installed")
def test_openssl_command_signature_verifies(tmp_path, key):
    (tmp_path / "k.pem").write_text(key.to_pem())
    (tmp_path / "m").write_bytes(MSG)
    subprocess.run(["openssl", "dgst", "-sm3", "-sign", str(tmp_path / "k.pem"), "-sigopt",
                    "distid:1234567812345678", "-out", str(tmp_path / "s"), str(tmp_path / "m")], check=True)
    raw = _openssl.der_to_raw((tmp_path / "s").read_bytes())
    assert key.public_key.verify(MSG, raw)


def test_der_conversion_round_trip():
    for raw in [bytes.fromhex(R + S), bytes(31) + b"\x01" + b"\x7f" * 32, b"\x80" * 64]:
        assert _openssl.der_to_raw(_openssl.raw_to_der(raw)) == raw


def _gmssl(key: SM2PrivateKey) -> CryptSM2:
    # gmssl's own object for the key, made as the fallback backend makes it (it knows gmssl's key-text quirk)
    return sm2._GmsslBackend._crypt(key.to_bytes(), key.public_key.x + key.public_key.y)


@pytest.mark.parametrize("message", [b"", b"hello", "电子健康卡".encode() * 50])
def test_our_signature_verifies_with_gmssl(message):
    key = SM2PrivateKey.generate()
    assert _gmssl(key).verify_with_sm3(key.sign(message).hex(), message)
    assert not _gmssl(key).verify_with_sm3(key.sign(message).hex(), message + b"!")


@pytest.mark.parametrize("message", [b"", b"hello", b"\x00" * 200])
def test_gmssl_signature_verifies_with_ours(message):
    key = SM2PrivateKey.generate()
    sig = bytes.fromhex(_gmssl(key).sign_with_sm3(message))
    assert key.public_key.verify(message, sig)
    assert not key.public_key.verify(message + b"!", sig)


def test_gmssl_fallback_backend(monkeypatch, key):
    made_by_openssl = key.sign(b"data")
    monkeypatch.setattr(sm2, "_BACKEND", sm2._GmsslBackend())
    assert sm2.backend_name() == "gmssl"
    slow = SM2PrivateKey.from_bytes(D)
    assert slow.public_key.x == X and slow.public_key.y == Y
    sig = slow.sign(b"data")
    fresh_pub = SM2PublicKey.from_xy(X, Y)
    assert fresh_pub.verify(b"data", sig) and fresh_pub.verify(b"data", made_by_openssl)
    assert not fresh_pub.verify(b"date", sig)
    monkeypatch.undo()
    assert key.public_key.verify(b"data", sig)


# A key whose x starts with the byte 04 and then the digit 4: given as text, gmssl's CryptSM2 would strip "044"
# (str.lstrip("04")) and use another point. One key in 256 starts with 04; a random key of the tests above met
# it in a local run.
D_X04 = bytes.fromhex("1A9D7DF06618E67DEC8743ACA1F14B2AF32740EAFE30732DCE595BB059481A1C")


def test_a_key_whose_x_starts_with_04_works_with_gmssl(monkeypatch):
    key = SM2PrivateKey.from_bytes(D_X04)
    assert key.public_key.x.hex().startswith("044")
    assert _gmssl(key).verify_with_sm3(key.sign(b"data").hex(), b"data")
    assert key.public_key.verify(b"data", bytes.fromhex(_gmssl(key).sign_with_sm3(b"data")))
    made_by_openssl = key.sign(b"data")
    monkeypatch.setattr(sm2, "_BACKEND", sm2._GmsslBackend())  # the fallback backend, with the same key
    slow = SM2PrivateKey.from_bytes(D_X04)
    assert slow.public_key.x == key.public_key.x
    public = SM2PublicKey.from_xy(key.public_key.x, key.public_key.y)
    assert public.verify(b"data", made_by_openssl) and public.verify(b"data", slow.sign(b"data"))
    assert not public.verify(b"date", made_by_openssl)
