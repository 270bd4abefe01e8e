"""Electronic health card ID derivation: the national specification's example, reproduced exactly."""

import re

import pytest

from app.crypto import sm3_hmac
from app.ehc.card_id import (
    TEMPORARY_DOC_CODE,
    card_user_key,
    derive_card,
    diversification_factor,
    ehc_card_id,
    master_index_id,
    temporary_card,
)

ROOT = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
MID = bytes.fromhex("ABD17E7ED399EF68AB5660155D6E226D2C92EAC3254A4A66BED83AED0ADA1E9E")
CARD = "98FF9F2C05145CB9305E9D8A57E072BB51180CA49E5BE5E9D41BCE3A9A571928"
INDEX_KEY = bytes(range(32))


def test_specification_vector():
    assert diversification_factor(MID).hex().upper() == "92CDCE45A16799FD"
    assert card_user_key(ROOT, MID).hex().upper() == "86C63180C2806ED1F47B859DE501215B"
    assert ehc_card_id(ROOT, MID, "01", "11010020171225006X") == CARD


def test_card_id_depends_on_every_input():
    assert ehc_card_id(ROOT, MID, "01", "110101200001010010") != CARD
    assert ehc_card_id(ROOT, MID, "02", "11010020171225006X") != CARD
    assert ehc_card_id(bytes(16), MID, "01", "11010020171225006X") != CARD
    assert ehc_card_id(ROOT, bytes(32), "01", "11010020171225006X") != CARD


def test_master_index_id_is_hmac_of_code_and_number():
    mid = master_index_id(INDEX_KEY, "01", "11010020171225006X")
    assert mid == sm3_hmac(INDEX_KEY, b"01:11010020171225006X") and len(mid) == 32
    assert master_index_id(INDEX_KEY, "01", "110101200001010010") != mid
    assert master_index_id(bytes(32), "01", "11010020171225006X") != mid


def test_derive_card_is_deterministic():
    a = derive_card(ROOT, INDEX_KEY, "01", "11010020171225006X")
    b = derive_card(ROOT, INDEX_KEY, "01", "11010020171225006X")
    assert a == b
    assert a.card_id == ehc_card_id(ROOT, a.master_index_id, "01", "11010020171225006X")
    assert re.fullmatch(r"[0-9A-F]{64}", a.card_id)


@pytest.mark.parametrize("number", ["E00000001", "南字第0000001号", "X" * 31, "Y" * 80])
def test_every_document_gives_64_hex(number):
    assert re.fullmatch(r"[0-9A-F]{64}", derive_card(ROOT, INDEX_KEY, "03", number).card_id)


def test_long_inputs_do_not_collide_on_their_prefix():
    a = ehc_card_id(ROOT, MID, "03", "A" * 40)
    b = ehc_card_id(ROOT, MID, "03", "A" * 40 + "B")
    assert a != b


def test_temporary_cards():
    one, two = temporary_card(ROOT), temporary_card(ROOT)
    assert one.doc_code == TEMPORARY_DOC_CODE and one.card_id != two.card_id
    assert re.fullmatch(r"[0-9A-F]{64}", one.card_id)
    assert ehc_card_id(ROOT, one.master_index_id, one.doc_code, one.number) == one.card_id


def test_invalid_inputs():
    with pytest.raises(ValueError):
        diversification_factor(MID[:31])
    with pytest.raises(ValueError):
        ehc_card_id(ROOT, MID, "01", "1101\x00")
    with pytest.raises(ValueError):
        master_index_id(INDEX_KEY, "01", "")
    with pytest.raises(ValueError):
        card_user_key(ROOT[:8], MID)
