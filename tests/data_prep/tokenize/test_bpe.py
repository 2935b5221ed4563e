"""The byte-level BPE tokenizer: the library's ids, lossless decoding of any text, streaming
that holds back incomplete characters, the file it is stored in, and where a document may
be cut without changing its ids."""
import json

import numpy as np
import pytest

import data_prep
from data_prep import BpeTokenizer, CharTokenizer, DataError, tokenizer_from_json
from data_prep.tokenize.safe_cuts import safe_pieces
from data_prep.tokenize.tokenizer_file import byte_level_alphabet
from tests.helpers import varied_text

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> data_prep.PreparedData:
    from tests.helpers import prepared_bpe

    return data_prep.load(prepared_bpe(tmp_path_factory.mktemp("bpe"), vocab_size=400))


def library(data: data_prep.PreparedData) -> "tokenizers.Tokenizer":
    return tokenizers.Tokenizer.from_file(str(data.path / "tokenizer.json"))


def test_our_byte_table_is_the_librarys(bpe):
    assert sorted(byte_level_alphabet().values()) == sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    assert {bpe.tokenizer.piece(i) for i in range(len(bpe.tokenizer))} >= {bytes([b]) for b in range(256)}


def test_encoding_gives_the_librarys_ids_on_text_it_never_saw(bpe):
    text = varied_text(50_000, seed=3)
    assert bpe.tokenizer.encode(text) == library(bpe).encode(text).ids


@pytest.mark.parametrize("text", [
    "emoji 🙂👩\u200d💻🇫🇷 and more", "東京 日本語 한국어", "e\u0301\u0302 combining marks", "\r\n\t\0 \x7f\u2028",
    "<|endoftext|> is text here", "", " ", "🙂" * 50,
])
def test_decode_gives_back_any_text(bpe, text):
    assert bpe.tokenizer.decode(bpe.tokenizer.encode(text)) == text


def test_decode_gives_back_a_large_sample_of_every_plane(bpe):
    text = varied_text(100_000, seed=4)
    assert bpe.tokenizer.decode(bpe.tokenizer.encode(text)) == text


def test_a_literal_end_of_text_marker_in_text_is_text_not_the_special_token(bpe):
    assert bpe.tokenizer.eot_id not in bpe.tokenizer.encode("a <|endoftext|> b")


def test_streaming_holds_back_the_bytes_of_an_incomplete_character(bpe):
    tok = bpe.tokenizer
    text = "a🙂東e\u0301 京🙂🙂 語 ж🎉 한국"  # the last few never seen in training: their bytes, token by token
    ids = tok.encode(text)
    # some token of this text ends inside a character, else the test would prove nothing
    assert any(not _is_utf8(tok.piece(i)) for i in ids)
    decoder, pieces = tok.incremental_decoder(), []
    for i in ids:
        piece = decoder.push(i)
        assert "\ufffd" not in piece
        pieces.append(piece)
    assert "".join(pieces) + decoder.flush() == text


def test_byte_tokens_one_at_a_time_stream_whole_characters_only(bpe):
    tok = bpe.tokenizer
    byte_ids = {tok.piece(i): i for i in range(len(tok)) if len(tok.piece(i)) == 1}
    decoder = tok.incremental_decoder()
    out = [decoder.push(byte_ids[bytes([b])]) for b in "🙂".encode()]
    assert out == ["", "", "", "🙂"]


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_the_file_round_trips_and_keeps_its_fingerprint(bpe):
    tok = bpe.tokenizer
    again = tokenizer_from_json(tok.to_json())
    assert (isinstance(again, BpeTokenizer) and again.fingerprint() == tok.fingerprint()
            and again.to_json() == tok.to_json())
    assert (bpe.path / "tokenizer.json").read_text(encoding="utf-8") == tok.to_json()


def test_files_are_read_by_their_kind(bpe):
    assert isinstance(tokenizer_from_json(bpe.tokenizer.to_json()), BpeTokenizer)
    assert isinstance(tokenizer_from_json(CharTokenizer(chars=list("ab")).to_json()), CharTokenizer)
    assert bpe.tokenizer.fingerprint() != CharTokenizer(chars=list("ab")).fingerprint()


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["model"]["vocab"].update({"ka": 5}), "ids are not 0..N-1"),
    (lambda d: d["model"]["merges"].append("zz qq"), "not in its vocabulary"),
    (lambda d: d["model"]["vocab"].pop(next(t for t, i in d["model"]["vocab"].items()
                                            if i == len(d["model"]["vocab"]) - 1)),
     "not in its vocabulary"),
    (lambda d: d["model"].update(byte_fallback=True), "byte fallback"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "other settings"),
    (lambda d: d["model"]["vocab"].update({"a b": len(d["model"]["vocab"])}), "byte-level characters"),
    (lambda d: d["added_tokens"][0].update(id=3), "special tokens"),
    (lambda d: d["model"].pop("merges"), "malformed"),
])
def test_a_bpe_file_edited_into_something_inconsistent_is_one_clear_error(bpe, edit, fragment):
    d = bpe.tokenizer.to_dict()
    edit(d)
    with pytest.raises(DataError, match=fragment):
        tokenizer_from_json(json.dumps(d))


# -- where a document may be cut ----------------------------------------------------------------
def pieces_ids(tok: BpeTokenizer, text: str, target: int, limit: int) -> list[int]:
    pieces = list(safe_pieces([text[i : i + 997] for i in range(0, len(text), 997)], target, limit))  # odd-sized chunks
    assert "".join(pieces) == text and max(map(len, pieces)) <= limit
    return np.concatenate(tok.encode_batch(pieces)).tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cutting_where_pieces_cut_never_changes_the_ids(bpe, seed):
    text = varied_text(60_000, seed=seed) + " a\nb c\n\nd  e \n f"
    assert pieces_ids(bpe.tokenizer, text, target=40, limit=100_000) == library(bpe).encode(text).ids


def test_ordinary_text_is_cut_into_many_pieces_with_the_same_ids(bpe):
    import random

    from tests.helpers import unicode_document

    rng = random.Random(5)
    text = "".join(unicode_document(rng, i) for i in range(40))
    assert len(list(safe_pieces([text], 200, 10_000))) > 20
    assert pieces_ids(bpe.tokenizer, text, target=200, limit=10_000) == library(bpe).encode(text).ids


def test_a_stretch_without_a_safe_place_is_cut_at_the_limit():
    pieces = list(safe_pieces(["東" * 2500], target=100, limit=1000))
    assert [len(p) for p in pieces] == [1000, 1000, 500]
