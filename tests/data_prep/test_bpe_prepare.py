"""`gpt-prepare --tokenizer bpe`: a byte-level BPE learned on the training split, the shards
holding the library's own ids, meta.json recording what bits per character need."""
import json
import random

import numpy as np
import pytest

import data_prep
from data_prep import BpeTokenizer
from data_prep.prepare import PrepareOptions, prepare
from tests.helpers import unicode_document, write_unicode_corpus

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_unicode_corpus(tmp_path_factory.mktemp("bpe-corpus") / "corpus")


def bpe_options(vocab_size: int = 320, **options) -> PrepareOptions:
    return PrepareOptions(**{"workers": 1, "progress": False, "tokenizer": "bpe", "vocab_size": vocab_size, **options})


def documents(data: data_prep.PreparedData, split: str) -> list[np.ndarray]:
    """A split's token stream cut after each end-of-text token (which stays out)."""
    ids = np.concatenate([np.asarray(a) for a in data.split(split)])
    ends = np.flatnonzero(ids == data.tokenizer.eot_id)
    assert len(ends) and ends[-1] == len(ids) - 1
    return np.split(ids, ends + 1)[:-1]


def test_the_train_shards_hold_the_librarys_ids_of_each_document(corpus, tmp_path):
    prepare([corpus], tmp_path / "data", bpe_options())
    data = data_prep.load(tmp_path / "data")
    lib = tokenizers.Tokenizer.from_file(str(tmp_path / "data" / "tokenizer.json"))
    texts = {p.read_text(encoding="utf-8") for p in corpus.iterdir()}
    docs = documents(data, "train")
    assert len(docs) == data.meta["splits"]["train"]["documents"] > 100
    for doc in docs:
        text = data.tokenizer.decode(doc[:-1].tolist())
        assert text in texts and lib.encode(text).ids == doc[:-1].tolist()


def test_a_document_longer_than_a_piece_gets_the_ids_of_the_whole(tmp_path):
    rng = random.Random(3)
    text = "".join(unicode_document(rng, i) for i in range(400))  # about 150,000 characters: pieces of 65,536 at most
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    prepare([tmp_path / "one.txt"], tmp_path / "data", bpe_options(vocab_size=400))
    data = data_prep.load(tmp_path / "data")
    assert data.meta["split_mode"] == "text"
    lib = tokenizers.Tokenizer.from_file(str(tmp_path / "data" / "tokenizer.json"))
    (train,), (val,) = documents(data, "train"), documents(data, "val")
    n = data.meta["splits"]["train"]["characters"]
    assert train[:-1].tolist() == lib.encode(text[:n]).ids and val[:-1].tolist() == lib.encode(text[n:]).ids


def test_the_bpe_learns_from_the_training_split_only(tmp_path):
    # one document, so val is its last 10%: a word there alone must not become a token
    rng = random.Random(4)
    head = "".join(unicode_document(rng, i) for i in range(30))
    tail = "xqxqxqxq " * (len(head) // 180)  # a twentieth of the text: well inside the val tail
    (tmp_path / "one.txt").write_text(head + tail, encoding="utf-8")
    prepare([tmp_path / "one.txt"], tmp_path / "data", bpe_options())
    tok = data_prep.load(tmp_path / "data").tokenizer
    assert all(b"xq" not in tok.piece(i) and b"qx" not in tok.piece(i) for i in range(len(tok)))
    assert any(b"ka" in tok.piece(i) for i in range(len(tok)))


def test_the_vocabulary_has_the_size_asked_and_ids_of_the_smallest_type(corpus, tmp_path):
    prepare([corpus], tmp_path / "data", bpe_options(vocab_size=300))
    data = data_prep.load(tmp_path / "data")
    assert len(data.tokenizer) == data.meta["vocab_size"] == 300 and isinstance(data.tokenizer, BpeTokenizer)
    assert data.meta["dtype"] == "uint16" and data.split("train")[0].dtype == np.dtype("<u2")
    assert len(data.tokenizer.merges) == 300 - 257 == data.meta["bpe"]["merges"]


def test_meta_records_the_kind_and_the_tokens_per_character_of_each_split(corpus, tmp_path):
    prepare([corpus], tmp_path / "data", bpe_options())
    meta = json.loads((tmp_path / "data" / "meta.json").read_text(encoding="utf-8"))
    assert (meta["version"], meta["tokenizer_kind"]) == (2, "bpe")
    for split in ("train", "val"):
        info = meta["splits"][split]
        # merges make tokens rarer than characters
        assert info["tokens_per_character"] == info["tokens"] / info["characters"] < 1
    assert meta["options"]["tokenizer"] == "bpe" and "max_vocab" not in meta["options"]


def test_a_character_folder_has_one_token_per_character_and_one_per_document_end(tmp_path, corpus):
    prepare([corpus], tmp_path / "data", PrepareOptions(workers=1, progress=False))
    data = data_prep.load(tmp_path / "data")
    for split in ("train", "val"):
        info = data.meta["splits"][split]
        assert info["tokens"] == info["characters"] + info["documents"]  # no merges, no fallback needed
        assert data.tokens_per_character(split) == pytest.approx(1 + info["documents"] / info["characters"])
    assert "tokens_per_character" not in data.meta["splits"]["val"] and "tokenizer_kind" not in data.meta


def test_the_same_inputs_give_byte_identical_output_with_one_or_two_workers(corpus, tmp_path, folder_bytes):
    prepare([corpus], tmp_path / "a", bpe_options())
    prepare([corpus], tmp_path / "b", bpe_options(workers=2))
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")


def test_encoding_in_many_small_batches_gives_the_same_shards_as_in_one(corpus, tmp_path, folder_bytes, monkeypatch):
    from data_prep.passes import pass2_bpe as bpe_encode

    prepare([corpus], tmp_path / "one", bpe_options())
    monkeypatch.setattr(bpe_encode, "BATCH_CHARS", 500)  # a few documents a batch: many flushes per unit
    prepare([corpus], tmp_path / "many", bpe_options())
    assert folder_bytes(tmp_path / "one") == folder_bytes(tmp_path / "many")


def test_new_text_can_be_encoded_with_a_bpe_base(corpus, tmp_path):
    prepare([corpus], tmp_path / "base", bpe_options())
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "new.txt").write_text("brand new words ж🎉 kalo mi\n" * 50, encoding="utf-8")
    prepare([tmp_path / "new"], tmp_path / "data",
            PrepareOptions(workers=1, progress=False, vocab_from=str(tmp_path / "base")))
    base, new = data_prep.load(tmp_path / "base"), data_prep.load(tmp_path / "data")
    assert new.tokenizer.fingerprint() == base.tokenizer.fingerprint()
    assert new.meta["bpe"]["learned_on"] == "base"
    (doc, *_rest) = documents(new, "train")
    assert new.tokenizer.decode(doc[:-1].tolist()).startswith("brand new words ж🎉")
