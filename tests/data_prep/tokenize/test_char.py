"""CharTokenizer: characters, byte fallback, the unknown token and JSON storage."""
import numpy as np
import pytest

from data_prep import CharTokenizer, DataError
from data_prep.tokenize import char as char_module
from data_prep.tokenize.char import EOT, Totals, build_vocab, codepoints, present, smallest_dtype

UNICODE = "héllo wörld\r\n\tcafé 東京 🙂🎉 e\u0301 \U0001d11e \U0010fffd naïve — “ok”"


def test_encode_decode_round_trips_text_whose_characters_are_all_in_the_vocabulary():
    tok = CharTokenizer(chars=sorted(set(UNICODE)), oov="error")
    ids = tok.encode(UNICODE)
    assert len(ids) == len(UNICODE)
    assert tok.decode(ids) == UNICODE


def test_byte_fallback_round_trips_characters_outside_the_vocabulary():
    tok = CharTokenizer(chars=list("helo wrd"), oov="byte")
    ids = tok.encode(UNICODE)
    assert tok.decode_bytes(ids).decode("utf-8") == UNICODE


def test_byte_fallback_spends_one_token_per_utf8_byte_of_an_unknown_character():
    tok = CharTokenizer(chars=list("ab"), oov="byte")
    for ch in ("é", "東", "🙂"):
        ids = tok.encode("a" + ch + "b")
        assert len(ids) == 2 + len(ch.encode())
        assert [i - tok.byte_offset for i in ids[1:-1]] == list(ch.encode())


def test_unk_mode_maps_each_unknown_character_to_the_one_unknown_token():
    tok = CharTokenizer(chars=list("abc"), oov="unk")
    ids = tok.encode("a🙂b東c")
    assert ids == [tok.encode("a")[0], tok.unk_id, tok.encode("b")[0], tok.unk_id, tok.encode("c")[0]]
    assert len(tok) == 2 + 3  # end-of-text and unknown, then the characters


def test_tokenizer_without_fallback_raises_data_error_naming_the_unknown_characters():
    tok = CharTokenizer(chars=list("abc"), oov="error")
    with pytest.raises(DataError, match="not in the vocabulary") as err:
        tok.encode("abc東x")
    assert "'東' (U+6771)" in str(err.value) and "'x' (U+0078)" in str(err.value)


def test_end_of_text_tokens_follow_the_given_offsets_even_after_byte_fallback():
    tok = CharTokenizer(chars=list("ab"), oov="byte")
    ids = tok.encode_array("a🙂b", eot_after=[2, 3]).tolist()
    assert ids == tok.encode("a🙂") + [tok.eot_id] + tok.encode("b") + [tok.eot_id]


def test_token_lengths_predicts_the_encoded_length():
    tok = CharTokenizer(chars=list("ab é"), oov="byte")
    text = "ab é東🙂 aa"
    cps, counts = np.unique(codepoints(text), return_counts=True)
    assert tok.token_lengths(cps, counts) == len(tok.encode(text))


def test_incremental_decoder_holds_back_an_incomplete_utf8_sequence():
    tok = CharTokenizer(chars=list("a"), oov="byte")
    dec = tok.incremental_decoder()
    out = [dec.push(i) for i in tok.encode("a🙂a")]
    assert out == ["a", "", "", "", "🙂", "a"]
    assert dec.flush() == ""


def test_json_storage_round_trips_the_vocabulary_and_ids():
    tok = CharTokenizer(chars=list("zyx東🙂"), oov="unk")
    again = CharTokenizer.from_json(tok.to_json())
    assert again.to_dict() == tok.to_dict()
    assert again.encode("x🙂?") == tok.encode("x🙂?")
    assert again.fingerprint() == tok.fingerprint()


def test_a_newer_version_of_the_first_tokenizer_format_is_refused():
    d = CharTokenizer(chars=list("ab")).identity()
    d["version"] += 1
    with pytest.raises(DataError, match="newer"):
        CharTokenizer.from_dict(d)


def test_malformed_tokenizer_json_is_a_data_error():
    with pytest.raises(DataError, match="malformed"):
        CharTokenizer.from_json('{"kind": "char"')


def test_id_layout_is_specials_then_characters_then_bytes():
    tok = CharTokenizer(chars=list("ab"), oov="byte")
    assert tok.specials == [EOT] and tok.eot_id == 0
    assert tok.encode("ab") == [1, 2]
    assert tok.byte_offset == 3 and len(tok) == 3 + 256


def test_build_vocab_keeps_the_most_frequent_characters_ties_by_code_point():
    cps = np.array([ord(c) for c in "abcd"])
    counts = np.array([5, 9, 5, 1])
    assert build_vocab(cps, counts, max_vocab=4, min_count=1, oov="error") == ["b", "a", "c"]
    assert build_vocab(cps, counts, max_vocab=100, min_count=2, oov="error") == ["b", "a", "c"]


def test_build_vocab_leaves_room_for_byte_tokens_only_when_characters_are_left_out():
    cps = np.arange(0x100, 0x100 + 300)
    counts = np.ones(300, np.int64)
    assert len(build_vocab(cps, counts, max_vocab=301, min_count=1, oov="byte")) == 300
    assert len(build_vocab(cps, counts, max_vocab=262, min_count=1, oov="byte")) == 5


def test_smallest_dtype_fits_the_vocabulary():
    assert smallest_dtype(256) == np.uint8
    assert smallest_dtype(257) == np.uint16
    assert smallest_dtype(70_000) == np.uint32


def test_build_vocab_leaves_room_for_byte_tokens_when_rare_or_val_only_characters_need_them():
    cps = np.arange(0x100, 0x100 + 100)
    counts = np.where(np.arange(100) < 90, 5, 1)
    assert len(build_vocab(cps, counts, max_vocab=300, min_count=2, oov="byte")) == 300 - 1 - 256
    assert len(build_vocab(cps, counts, max_vocab=300, min_count=1, oov="byte", others_outside=True)) == 300 - 1 - 256
    assert len(build_vocab(cps, counts, max_vocab=300, min_count=1, oov="byte")) == 100


@pytest.mark.parametrize("oov, n_chars", [("byte", 10), ("byte", 300), ("unk", 253), ("unk", 254)])
def test_encoding_straight_to_a_narrow_id_type_gives_the_same_ids(oov, n_chars):
    # ("unk", 254) makes exactly 256 ids: uint8 then has no spare value to mark unknown characters
    rng = np.random.default_rng(0)
    chars = [chr(0x100 + i) for i in range(n_chars)]
    tok = CharTokenizer(chars=chars, oov=oov)
    cps = rng.choice([ord(c) for c in chars] + [0x41, 0xE9, 0x6771, 0x1F642], size=5000).astype(np.uint32)
    eots = np.sort(rng.choice(np.arange(1, 5001), size=300, replace=False))
    wide = tok.encode_codepoints(cps, eots)
    for dtype in (np.uint8, np.uint16, np.uint32):
        if len(tok) <= np.iinfo(dtype).max + 1:
            narrow = tok.encode_codepoints(cps, eots, dtype=dtype)
            assert narrow.dtype == dtype and np.array_equal(narrow, wide)


@pytest.mark.parametrize("oov, n_chars, dtype", [
    ("byte", 50, np.uint16), ("unk", 50, np.uint8), ("unk", 254, np.uint8), ("unk", 254, np.uint16)])
def test_a_lookup_gives_the_ids_of_its_code_points_in_the_type_asked(oov, n_chars, dtype):
    # one- and four-byte code points, long enough for the pair lookup; ("unk", 254) makes
    # exactly 256 ids: uint8 then has no spare value to mark outside ones
    rng = np.random.default_rng(1)
    tok = CharTokenizer(chars=[chr(0x20 + i) for i in range(n_chars)], oov=oov)
    for stored in (np.uint8, np.uint32):
        cps = rng.integers(0x20, 0x20 + min(n_chars, 0xE0), size=70_001).astype(stored)
        made = tok.lookup(cps, dtype)
        assert made.dtype == dtype and np.array_equal(made, tok.encode_codepoints(cps, dtype=dtype))


@pytest.mark.parametrize("oov", ["byte", "unk", "error"])
def test_a_lookup_with_a_character_outside_the_vocabulary_gives_none(oov):
    tok = CharTokenizer(chars=list("ab"), oov=oov)
    assert tok.lookup(np.array([97, 98] * 5000, np.uint8), np.uint16) is not None
    assert tok.lookup(np.array([97, 98] * 5000 + [99], np.uint8), np.uint16) is None


def test_present_lists_each_counted_code_point_once_in_order():
    total = {"train": np.array([0, 3, 0, 1, 0, 5, 0]), "val": np.array([2, 0, 0, 1, 0, 0, 9])}
    assert present(total).tolist() == [0, 1, 3, 5, 6]
    totals = Totals(total)  # found once, kept with the counts
    assert totals.seen.tolist() == [0, 1, 3, 5, 6] and totals["val"] is total["val"]
    assert present({s: np.zeros(4, np.int64) for s in total}).tolist() == []


@pytest.mark.parametrize("text", ["", "ascii\0", "café", "wider: € and ’", "an emoji 🙂 and U+10FFFF \U0010FFFF",
                                  "a lone surrogate \ud800, trailing NULs \0\0"])
@pytest.mark.parametrize("longest", [None, 3])  # 3: numpy's item too short for these, the codec instead
def test_code_points_are_the_characters_as_numbers(monkeypatch, text, longest):
    if longest is not None:
        monkeypatch.setattr(char_module, "NUMPY_STR_MAX", longest)
    cps = codepoints(text)
    assert cps.dtype == np.uint32 and cps.tolist() == [ord(c) for c in text]
