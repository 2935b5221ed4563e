"""The tokenizer file is a Hugging Face `tokenizers` JSON: the library loads it and gives our
ids on any text; files in the first format still load."""
import json

import numpy as np
import pytest

import data_prep
from data_prep import CharTokenizer, DataError
from data_prep.tokenize.char import EOT
from tests.helpers import VOCAB_TEXT, varied_text

tokenizers = pytest.importorskip("tokenizers")


def library(tok: CharTokenizer, tmp_path) -> "tokenizers.Tokenizer":
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_json(), encoding="utf-8")
    lib = tokenizers.Tokenizer.from_file(str(path))
    lib.encode_special_tokens = True  # literal "<|endoftext|>" in text is text, as in our pipeline
    return lib


@pytest.mark.parametrize("oov", ["byte", "unk"])
def test_the_library_gives_our_ids_on_a_large_varied_sample(oov, tmp_path):
    tok = CharTokenizer(chars=sorted(set(VOCAB_TEXT)), oov=oov)
    text = varied_text(300_000)
    ours = tok.encode_array(text)
    assert np.array_equal(np.array(library(tok, tmp_path).encode(text).ids), ours)


def test_the_library_gives_our_ids_for_a_vocabulary_that_covers_the_text(tmp_path):
    text = varied_text(20_000, seed=1)
    tok = CharTokenizer(chars=sorted(set(text)), oov="error")
    assert library(tok, tmp_path).encode(text).ids == tok.encode(text)


def test_every_character_the_library_sees_alone_gets_our_ids(tmp_path):
    tok = CharTokenizer(chars=list("ab\n"), oov="byte")
    lib = library(tok, tmp_path)
    for ch in ["\r", "\r\n", "\0", " ", "\t", "\U0010FFFF", "\U0001F642", "\u0301", "\uFFFF", "\x80"]:
        assert lib.encode("a" + ch + "b").ids == tok.encode("a" + ch + "b"), repr(ch)


def test_the_library_decodes_byte_fallback_back_to_the_text(tmp_path):
    tok = CharTokenizer(chars=list("abc \n"), oov="byte")
    text = varied_text(5_000, seed=2)
    assert library(tok, tmp_path).decode(tok.encode(text)) == text


def test_end_of_text_is_a_special_token_of_the_library_tokenizer(tmp_path):
    tok = CharTokenizer(chars=list("ab"), oov="byte")
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_json(), encoding="utf-8")
    lib = tokenizers.Tokenizer.from_file(str(path))
    assert lib.token_to_id(EOT) == tok.eot_id == 0
    assert lib.encode("a" + EOT + "b").ids == [tok.encode("a")[0], tok.eot_id, tok.encode("b")[0]]
    assert lib.decode([tok.eot_id, *tok.encode("ab")]) == "ab"  # skipped as special


def test_in_unk_mode_the_unknown_token_is_special_and_ours(tmp_path):
    tok = CharTokenizer(chars=list("ab"), oov="unk")
    lib = library(tok, tmp_path)
    assert lib.token_to_id("<|unk|>") == tok.unk_id
    assert lib.encode("a東🙂b").ids == tok.encode("a東🙂b") == [tok.encode("a")[0], tok.unk_id, tok.unk_id,
                                                              tok.encode("b")[0]]


def test_a_prepared_folder_holds_a_library_file_that_gives_the_shards_ids(prepare_data, owt_folder, owt_texts):
    _summary, data = prepare_data(owt_folder, min_char_count=500)  # rare characters go through byte fallback
    assert data.tokenizer.oov == "byte"
    lib = tokenizers.Tokenizer.from_file(str(data.path / "tokenizer.json"))
    ids = np.concatenate([np.asarray(a) for a in data.split("train")])
    documents = np.split(ids, np.flatnonzero(ids == data.tokenizer.eot_id) + 1)[:-1]
    for doc in documents:
        text = lib.decode(doc.tolist())
        assert text in owt_texts and lib.encode(text).ids + [data.tokenizer.eot_id] == doc.tolist()


def test_files_in_the_first_format_still_load_with_the_same_fingerprint(tmp_path):
    tok = CharTokenizer(chars=list("zyx東"), oov="byte")
    first = json.dumps({"kind": "char", "version": 1, "oov": "byte", "special_tokens": [EOT], "chars": "zyx東",
                        "byte_fallback": True, "vocab_size": 1 + 4 + 256})
    old = CharTokenizer.from_json(first)
    assert old.encode("x東🙂") == tok.encode("x東🙂") and old.fingerprint() == tok.fingerprint()
    assert CharTokenizer.from_json(old.to_json()).fingerprint() == tok.fingerprint()


def test_a_data_folder_written_in_the_first_format_still_loads(prepare_data, owt_folder):
    _summary, data = prepare_data(owt_folder)
    tok = data.tokenizer
    (data.path / "tokenizer.json").write_text(json.dumps(tok.identity()), encoding="utf-8")
    again = data_prep.load(data.path)
    assert again.tokenizer.fingerprint() == tok.fingerprint() and again.tokenizer.chars == tok.chars


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d["model"]["vocab"].update({"zz": 5}), "ids are not 0..N-1"),
    (lambda d: d["model"]["vocab"].pop("<0x41>"), "ids are not 0..N-1"),
    (lambda d: d["model"].update(merges=[["a", "b"]]), "not a character vocabulary"),
    (lambda d: d["added_tokens"][0].update(id=3), "special tokens"),
    (lambda d: d["model"].update(unk_token="<|unk|>"), "both byte fallback and an unknown token"),
    (lambda d: d["model"].pop("vocab"), "malformed"),
])
def test_a_tokenizer_file_edited_into_something_inconsistent_is_one_clear_error(edit, fragment):
    d = CharTokenizer(chars=list("abc"), oov="byte").to_dict()
    edit(d)
    with pytest.raises(DataError, match=fragment):
        CharTokenizer.from_dict(d)


def test_transformers_loads_the_file_when_it_is_installed(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = CharTokenizer(chars=list("abc \n"), oov="byte")
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_json(), encoding="utf-8")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert fast("abc 東\n")["input_ids"] == tok.encode("abc 東\n")


def test_lone_surrogates_in_json_records_become_replacement_characters_and_are_counted(prepare_data, tmp_path):
    corpus = tmp_path / "records.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"record {i} " + ("a\ud800b" if i == 3 else "ok")})
                                for i in range(10)) + "\n")
    summary, data = prepare_data(corpus)
    assert summary.meta["skipped"]["invalid_utf8_replaced"] == 1
    assert "\ufffd" in data.tokenizer.chars and not any(0xD800 <= ord(c) <= 0xDFFF for c in data.tokenizer.chars)


def test_a_checkpoint_that_stored_the_first_format_still_loads(tmp_path):
    from gpt.store import checkpoint as ck
    from gpt.store.load import model_from_checkpoint
    from tests.helpers import train_tiny_model

    model, tok, cfg = train_tiny_model(steps=1)
    ck.save_checkpoint(tmp_path / "best.pt", {"model_config": cfg.to_dict(), "model": ck.plain_state_dict(model),
                                              "tokenizer": json.dumps(tok.identity())})
    _model, again = model_from_checkpoint(ck.load_checkpoint(tmp_path / "best.pt"))
    assert again.fingerprint() == tok.fingerprint() and again.encode("the cat") == tok.encode("the cat")
