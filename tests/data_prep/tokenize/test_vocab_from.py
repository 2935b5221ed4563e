"""`gpt-prepare NEW_TEXT --vocab-from RUN`: new text encoded with a trained model's vocabulary,
so that `gpt-train --init-from RUN` fine-tunes on it."""
import json
import zipfile

import numpy as np
import pytest

import data_prep
from data_prep import DataError
from data_prep.prepare import PrepareOptions, prepare
from gpt.train import train
from tests.helpers import tiny_run, write_corpus

NEW_TEXT = "the queen sees a zebra. QZX 東京 🙂\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny run whose vocabulary has byte fallback: one rare character is left out of it."""
    tmp = tmp_path_factory.mktemp("base")
    corpus = write_corpus(tmp / "corpus")
    (corpus / "rare.txt").write_text("a rare é\n", encoding="utf-8")
    data = tmp / "data"
    prepare([corpus], data, PrepareOptions(workers=1, progress=False, min_char_count=2))
    run = tmp / "run"
    train(overrides=tiny_run(data, run, max_iters=10), log=lambda s: None)
    return run


def new_corpus(folder, text=NEW_TEXT):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "new.txt").write_text(text * 40, encoding="utf-8")
    return folder


def base_fingerprint(run):
    return data_prep.CharTokenizer.from_json((run / "tokenizer.json").read_text(encoding="utf-8")).fingerprint()


def test_new_text_gets_the_base_vocabulary_and_fine_tuning_accepts_it(base, tmp_path):
    new = tmp_path / "new"
    prepare([new_corpus(tmp_path / "corpus")], new, PrepareOptions(workers=1, progress=False, vocab_from=str(base)))
    data = data_prep.load(new)
    assert data.tokenizer.fingerprint() == base_fingerprint(base)
    result = train(overrides=tiny_run(new, tmp_path / "ft", init_from=str(base), max_iters=2, eval_interval=1),
                   log=lambda s: None)
    assert result.step == 2


def test_characters_outside_the_base_vocabulary_are_counted_in_meta_and_the_summary(base, tmp_path, prepare_cli):
    new_corpus(tmp_path / "corpus")
    proc = prepare_cli("corpus", "--out", "new", "--vocab-from", base, "--quiet", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    outside = json.loads((tmp_path / "new" / "meta.json").read_text())["coverage"]["outside_characters"]
    distinct = {c for c in NEW_TEXT if c not in data_prep.load(tmp_path / "new").tokenizer.chars}
    assert (outside["distinct"] == len(distinct)
            and outside["train"] + outside["val"] == 40 * sum(c in distinct for c in NEW_TEXT))
    assert f"({len(distinct)} distinct), encoded as byte fallback" in proc.stdout
    # of the new text's characters, those the base holds: not the base's own count
    held = len(set(NEW_TEXT)) - len(distinct)
    assert (f"vocabulary: the base's (--vocab-from), {len(data_prep.load(tmp_path / 'new').tokenizer)} tokens "
            f"({held} of the corpus's {len(set(NEW_TEXT))} distinct" in proc.stdout)


@pytest.mark.parametrize("oov", ["byte", "unk"])
def test_a_fallback_asked_for_is_kept_where_the_corpus_needs_none_so_new_text_can_use_it(tmp_path, oov):
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "a.txt").write_text("the cat sat on the mat\n" * 200)
    prepare([clean], tmp_path / "base", PrepareOptions(workers=1, progress=False, oov=oov))
    tokenizer = data_prep.load(tmp_path / "base").tokenizer
    assert tokenizer.oov == oov
    prepare([new_corpus(tmp_path / "corpus")], tmp_path / "new",
            PrepareOptions(workers=1, progress=False, vocab_from=str(tmp_path / "base")))
    assert data_prep.load(tmp_path / "new").meta["coverage"]["outside_characters"]["distinct"] > 0


def test_by_default_a_clean_corpus_keeps_no_fallback_and_a_base_without_one_says_how_to_get_it(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "a.txt").write_text("the cat sat on the mat\n" * 200)
    prepare([clean], tmp_path / "base", PrepareOptions(workers=1, progress=False))
    assert len(data_prep.load(tmp_path / "base").tokenizer) == len(set("the cat sat on the mat\n")) + 1
    with pytest.raises(DataError, match="prepared with --oov byte"):
        prepare([new_corpus(tmp_path / "corpus")], tmp_path / "new",
                PrepareOptions(workers=1, progress=False, vocab_from=str(tmp_path / "base")))


@pytest.mark.parametrize("name", ["best.pt", "tokenizer.json"])
def test_a_checkpoint_or_tokenizer_file_names_the_base_as_well(base, tmp_path, name):
    # a checkpoint's vocabulary is its run folder's tokenizer.json: gpt-prepare never opens it (that takes torch)
    prepare([new_corpus(tmp_path / "corpus")], tmp_path / "new",
            PrepareOptions(workers=1, progress=False, vocab_from=str(base / name)))
    assert data_prep.load(tmp_path / "new").tokenizer.fingerprint() == base_fingerprint(base)


@pytest.mark.parametrize("given", ["the checkpoint", "its folder"])
def test_a_checkpoint_without_its_run_folders_tokenizer_file_is_refused_saying_what_to_name(base, tmp_path, given):
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "best.pt").write_bytes((base / "best.pt").read_bytes())
    source = tmp_path / "copy" / "best.pt" if given == "the checkpoint" else tmp_path / "copy"
    with pytest.raises(DataError, match="no tokenizer.json beside the checkpoint best.pt.*name the run folder, its "
                                        "tokenizer.json, or the data folder the model was trained on"):
        prepare([new_corpus(tmp_path / "corpus")], tmp_path / "new",
                PrepareOptions(workers=1, progress=False, vocab_from=str(source)))


def test_a_base_with_an_unknown_token_encodes_new_characters_as_it_and_counts_them(tmp_path):
    base_data = tmp_path / "base"
    prepare([write_corpus(tmp_path / "corpus")], base_data,
            PrepareOptions(workers=1, progress=False, oov="unk", max_vocab=12))
    tok = data_prep.load(base_data).tokenizer
    assert tok.unk_id is not None
    prepare([new_corpus(tmp_path / "new_corpus")], tmp_path / "new",
            PrepareOptions(workers=1, progress=False, vocab_from=str(base_data)))
    new = data_prep.load(tmp_path / "new")
    assert new.tokenizer.fingerprint() == tok.fingerprint()
    outside = [c for c in NEW_TEXT if c not in tok.chars]
    assert outside
    counted = new.meta["coverage"]["outside_characters"]
    assert counted["train"] + counted["val"] == 40 * len(outside) and counted["distinct"] == len(set(outside))
    ids = np.concatenate([shard for name in ("train", "val") for shard in new.split(name)])
    assert int((ids == tok.unk_id).sum()) == 40 * len(outside)  # one unknown token per such character


def test_a_base_without_fallback_refuses_new_characters_naming_them(tmp_path):
    base_data = tmp_path / "base"
    prepare([write_corpus(tmp_path / "corpus")], base_data, PrepareOptions(workers=1, progress=False))
    assert data_prep.load(base_data).tokenizer.oov == "error"  # a clean corpus needs no fallback
    with pytest.raises(DataError, match=r"no byte fallback or unknown token.*'Q' \(U\+0051\)"):
        prepare([new_corpus(tmp_path / "new_corpus")], tmp_path / "new",
                PrepareOptions(workers=1, progress=False, vocab_from=str(base_data)))
    # text inside its vocabulary is fine
    prepare([new_corpus(tmp_path / "same", "the cat sees the moon.\n")], tmp_path / "same_data",
            PrepareOptions(workers=1, progress=False, vocab_from=str(base_data)))


@pytest.mark.parametrize("setup, args, fragment", [
    (lambda t: None, ["--vocab-from", "missing_run"], "--vocab-from missing_run: no such file or folder"),
    (lambda t: (t / "tok.json").write_text('{"model": {"type": "BPE"'), ["--vocab-from", "tok.json"],
     "tokenizer JSON is malformed"),
    (lambda t: (t / "ck.pt").write_bytes(b"PK\x03\x04 truncated"), ["--vocab-from", "ck.pt"], "corrupt or truncated"),
    (lambda t: zipfile.ZipFile(t / "ck.pt", "w").close(), ["--vocab-from", "ck.pt"],
     "no tokenizer.json beside the checkpoint"),
    (lambda t: (t / "empty").mkdir(), ["--vocab-from", "empty"], "no tokenizer.json and no checkpoint"),
    (lambda t: (t / "tok.json").write_text("{}"), ["--vocab-from", "tok.json", "--oov", "unk"],
     "--oov cannot change it"),
])
def test_a_bad_vocab_from_is_one_clear_line(tmp_path, prepare_cli, setup, args, fragment):
    new_corpus(tmp_path / "corpus")
    setup(tmp_path)
    proc = prepare_cli("corpus", "--out", "new", "--quiet", *args)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt-prepare: error:") and fragment in lines[0], proc.stderr
    assert not (tmp_path / "new").exists()
