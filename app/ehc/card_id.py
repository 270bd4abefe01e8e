"""Electronic health card ID (电子健康卡ID) derivation, as the national specification does it.

master index ID (主索引ID) = HMAC-SM3(platform index key, "<document type code>:<normalised number>"), §3
diversification factor f = XOR of the four 8-byte groups of the master index ID
card user key  = SM4-ECB(root key, f || NOT f)
card ID        = SM4-ECB(user key, document code + number, zero-padded to 32 bytes), as 64 upper-case hex

The 32-byte padding is what reproduces the specification's example (docs/terminal-vendors.md, "Test vectors"): a 20-byte
input ("01" + an 18-character ID number) padded to 32 gives two blocks, i.e. the 64 hex digits of a card ID.
Local extensions, not in the specification: a non-ASCII number (officer cards) is encoded as UTF-8, and an
input longer than 32 bytes is replaced by its SM3 digest so that every card ID stays 32 bytes.

A document whose derived card was cancelled (the wrong number of a corrected record, a resident deleted and
registered again) is given a reissued card: the same master index ID, a card ID from a random input. Not the
specification's derivation (which would give the cancelled card again), so not re-derivable: the stored card
identifier is what holds it.

Temporary cards (临时卡, no accepted document): a random 32-byte master index ID, document code "TMP" and the
number "T" + the first 12 bytes of that ID in hex; nothing links them to a person until a document is added,
which derives a formal card the normal way.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from app.crypto import sm3, sm3_hmac, sm4_ecb_encrypt

TEMPORARY_DOC_CODE = "TMP"
CARD_INPUT_SIZE = 32


def master_index_id(index_key: bytes, doc_code: str, number: str) -> bytes:
    """主索引ID: HMAC-SM3 of "<doc_code>:<number>" under the platform index key (32 bytes).

    `number` must already be normalised (e.g. upper-case X in resident ID numbers): the same person gets the
    same ID only if every node normalises the same way.
    """
    if not doc_code or not number:
        raise ValueError("document code and number are required")
    return sm3_hmac(index_key, f"{doc_code}:{number}".encode())


def diversification_factor(master_index_id: bytes) -> bytes:
    """The 8-byte XOR of the four 8-byte groups of the master index ID."""
    if len(master_index_id) != 32:
        raise ValueError("master index ID must be 32 bytes")
    f = 0
    for i in range(0, 32, 8):
        f ^= int.from_bytes(master_index_id[i: i + 8], "big")
    return f.to_bytes(8, "big")


def card_user_key(root_key: bytes, master_index_id: bytes) -> bytes:
    """The card's 16-byte user key: SM4-ECB(root key, f || NOT f)."""
    f = diversification_factor(master_index_id)
    return sm4_ecb_encrypt(root_key, f + bytes(b ^ 0xFF for b in f))


def _card_input(doc_code: str, number: str) -> bytes:
    data = (doc_code + number).encode("utf-8")
    if b"\x00" in data:
        raise ValueError("document number contains NUL")  # it would collide with the zero padding
    if len(data) > CARD_INPUT_SIZE:
        return sm3(data)
    return data.ljust(CARD_INPUT_SIZE, b"\x00")


def ehc_card_id(root_key: bytes, master_index_id: bytes, doc_code: str, number: str) -> str:
    """电子健康卡ID: 64 upper-case hex characters."""
    user_key = card_user_key(root_key, master_index_id)
    return sm4_ecb_encrypt(user_key, _card_input(doc_code, number)).hex().upper()


@dataclass(frozen=True)
class Card:
    """A derived card: what the index stores about it."""

    master_index_id: bytes
    doc_code: str
    number: str
    card_id: str


def derive_card(root_key: bytes, index_key: bytes, doc_code: str, number: str) -> Card:
    """Master index ID and card ID for a (normalised) document: the same at every node sharing the keys."""
    mid = master_index_id(index_key, doc_code, number)
    return Card(mid, doc_code, number, ehc_card_id(root_key, mid, doc_code, number))


def temporary_card(root_key: bytes) -> Card:
    """A new temporary card (临时卡) for a resident without an accepted document; random, not re-derivable."""
    mid = secrets.token_bytes(32)
    number = "T" + mid[:12].hex().upper()
    return Card(mid, TEMPORARY_DOC_CODE, number, ehc_card_id(root_key, mid, TEMPORARY_DOC_CODE, number))


def reissued_card(root_key: bytes, derived: Card) -> Card:
    """A formal card for a document whose derived card `derived` is cancelled: same master index ID, random ID."""
    salt = "R" + secrets.token_hex(8).upper()
    return Card(derived.master_index_id, derived.doc_code, derived.number,
                ehc_card_id(root_key, derived.master_index_id, derived.doc_code, salt))
