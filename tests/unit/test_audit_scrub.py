"""Finding 27: phone and ID numbers in any format never reach the audit text in clear; they become the blind
index of their normalised form. Also the time-ordered pending ids and the checkpoint format (pure parts)."""

from __future__ import annotations

import json
import re

import pytest

from app.audit.checkpoints import PREFIX, Checkpoint, _lines_from_end, parse_lines, public_key_from_jwk, sign
from app.audit.writer import event_id_for, normalise_number, pending_id, scrub_numbers
from app.core.ids import is_valid_id
from app.crypto import SM2PrivateKey


def blind(value: str) -> str:
    return f"<{value}>"


@pytest.mark.parametrize("written, normalised", [
    ("13912345678", "13912345678"),
    ("139-1234-5678", "13912345678"),
    ("139 1234 5678", "13912345678"),
    ("139.1234.5678", "13912345678"),
    ("+86 139 1234 5678", "13912345678"),
    ("+86-13912345678", "13912345678"),
    ("(+86) 139-1234-5678", "13912345678"),
    ("0086 13912345678", "13912345678"),
    ("８６　１３９１２３４５６７８", "13912345678"),  # full-width digits and space
    ("139－1234－5678", "13912345678"),  # full-width dash
    ("(010) 6512-3456", "01065123456"),
    ("11010519491231002X", "11010519491231002X"),
    ("110105 19491231 002x", "11010519491231002X"),
    ("110105-19491231-002X", "11010519491231002X"),
    ("110105491231002", "110105491231002"),  # 15-digit ID number
])
def test_numbers_in_any_format_are_blinded_normalised(written, normalised):
    text = f"patient with {written}, again"
    out = scrub_numbers(text, blind)
    assert out == f"patient with <{normalised}>, again" or out == f"patient with  <{normalised}>, again"
    assert not re.search(r"\d{4}", out.replace(normalised, "")), out
    assert normalise_number(written) == normalised


@pytest.mark.parametrize("kept", [
    "date=ge2024-01-01", "2024-01-01T08:00:00+08:00", "_count=500", "code=http://loinc.org|2345-7",
    "Patient/550e8400-e29b-41d4-a716-44665544ab00", "#" + "0123456789" * 6 + "abcd", "zip 100020",
])
def test_other_text_stays_readable(kept):
    assert scrub_numbers(kept, blind) == kept


def test_numbers_glued_to_words_or_hidden_in_ids_are_scrubbed():
    assert scrub_numbers("tel13912345678x", blind) == "tel<13912345678X>"
    assert scrub_numbers("Patient/550e8400-e29b-41d4-a716-139123456780", blind) == \
        "Patient/550e8400-e29b-41d4-a716-<139123456780>"


def test_pending_ids_sort_by_creation_and_are_fhir_ids():
    ids = [pending_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == 2000
    assert all(is_valid_id(i) and is_valid_id(event_id_for(i)) for i in ids[:10])
    assert ids[0][14] == "7"  # UUID version 7


def test_checkpoint_signature_covers_every_signed_field():
    key = type("K", (), {"kid": "11ABCDEFGH", "private": SM2PrivateKey.generate()})()
    cp = sign(key, "11/ehc", 42, "ab" * 32)
    assert cp.message() == PREFIX + json.dumps(
        {"chain": "11/ehc", "head": "ab" * 32, "kid": "11ABCDEFGH", "seq": 42, "time": cp.time},
        sort_keys=True, separators=(",", ":")).encode()
    assert cp.message().startswith(b"EHC-AUDIT-CHECKPOINT-1:{")
    pub = key.private.public_key
    assert cp.verify(pub)
    for change in ({"seq": 43}, {"head": "cd" * 32}, {"time": "2020-01-01T00:00:00.000Z"}, {"chain": "31/ehc"}):
        assert not Checkpoint.from_json({**cp.to_json(), **change}).verify(pub)
    assert not Checkpoint.from_json({**cp.to_json(), "sig": "AAAA"}).verify(pub)
    jwk = {"kty": "EC", "crv": "SM2", "x": _b64(pub.x), "y": _b64(pub.y)}
    assert cp.verify(public_key_from_jwk(jwk))


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_malformed_lines_are_named_and_the_file_is_read_backwards(tmp_path):
    lines = parse_lines('{"seq": 1}\nnot json\n\n{"chain":"c","seq":0,"head":"' + "a" * 64 +
                        '","time":"t","kid":"k","sig":"s"}\n')
    assert [(ln.number, ln.checkpoint, bool(ln.error)) for ln in lines] == \
        [(1, None, True), (2, None, True), (4, None, True)]
    path = tmp_path / "f"
    path.write_text("".join(f"line {n} " + "x" * 3000 + "\n" for n in range(10)))
    assert [s.split()[1] for s in _lines_from_end(path, block=1000)] == [str(n) for n in reversed(range(10))]
