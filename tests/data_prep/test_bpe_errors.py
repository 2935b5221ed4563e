"""Bad BPE input, as a user meets it: one line on stderr, a failing exit, and nothing that
existed before changed (even with --force)."""
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import assert_one_line_error, prepared_bpe, run_cli, write_unicode_corpus

OLD = {"meta.json": json.dumps({"format": "gpt-prepared-data", "note": "an older output that must survive"})}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe-errors")
    write_unicode_corpus(root / "corpus")
    return root


PREPARE_CASES = {
    "unknown tokenizer": (["--tokenizer", "wordpiece"], 2, ["--tokenizer", "invalid choice: 'wordpiece'"]),
    "vocab size too small": (["--tokenizer", "bpe", "--vocab-size", "200"], 1,
                             ["--vocab-size 200 is too small", "at least 258"]),
    "vocab size too large for the corpus": (["--tokenizer", "bpe", "--vocab-size", "20000"], 1,
                                            ["--vocab-size 20000 is more than the training split can give", "or less"]),
    "vocab size with char": (["--vocab-size", "300"], 2, ["--vocab-size is for --tokenizer bpe"]),
    "vocab size with an explicit char": (["--tokenizer", "char", "--vocab-size", "300"], 2,
                                         ["--vocab-size is for --tokenizer bpe"]),
    "bpe without a vocab size": (["--tokenizer", "bpe"], 2, ["--tokenizer bpe needs --vocab-size"]),
    "a char option with bpe": (["--tokenizer", "bpe", "--vocab-size", "300", "--max-vocab", "100"], 2,
                               ["--max-vocab", "a BPE is sized by --vocab-size"]),
    "tokenizer with vocab-from": (["--tokenizer", "bpe", "--vocab-size", "300", "--vocab-from", "corpus"], 2,
                                  ["--vocab-from", "cannot change it"]),
}


@pytest.fixture(scope="module")
def prepare_runs(workdir):
    """Every case at once (each is a process of its own), into its own existing output."""

    def run(case):
        args, _code, _fragments = PREPARE_CASES[case]
        out = workdir / f"out-{case.replace(' ', '-')}"
        out.mkdir()
        for name, text in OLD.items():
            (out / name).write_text(text)
        return case, run_cli("data_prep.cli", "corpus", "--out", out, "--force", "--workers", "1", "--quiet", *args,
                             cwd=workdir), out

    with ThreadPoolExecutor(2) as pool:
        return {case: (proc, out) for case, proc, out in pool.map(run, PREPARE_CASES)}


@pytest.mark.parametrize("case", sorted(PREPARE_CASES))
def test_bad_bpe_options_are_one_line_and_leave_the_output_untouched(prepare_runs, case):
    proc, out = prepare_runs[case]
    _args, code, fragments = PREPARE_CASES[case]
    assert_one_line_error(proc, "gpt-prepare", *fragments)
    assert proc.returncode == code
    assert {p.name: p.read_text() for p in out.iterdir()} == OLD
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


# -- a tokenizer file that no longer matches the shards --------------------------------------------
def edit_vocab_size(folder):
    """Drop the last merge and the token it made: a valid BPE of one token fewer."""
    d = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = d["model"]["vocab"]
    last = max(vocab, key=vocab.get)
    del vocab[last]
    d["model"]["merges"].pop()
    (folder / "tokenizer.json").write_text(json.dumps(d), encoding="utf-8")


def edit_broken_merge(folder):
    d = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    d["model"]["merges"][0] = "Ġ zzzz"
    (folder / "tokenizer.json").write_text(json.dumps(d), encoding="utf-8")


def edit_other_kind(folder):
    from data_prep import CharTokenizer

    chars = [chr(c) for c in range(0x21, 0x21 + 319 - 256)]  # as many tokens as the BPE, of another kind
    (folder / "tokenizer.json").write_text(CharTokenizer(chars=chars, oov="byte").to_json(), encoding="utf-8")


EDITS = {
    "vocabulary size differs from meta.json": (edit_vocab_size,
                                               ["has 319 tokens but", "meta.json says 320", "prepare the data again"]),
    "a merge of tokens it does not have": (edit_broken_merge, ["merge 'Ġ zzzz'"]),
    "a tokenizer of the other kind": (edit_other_kind, ["is a char tokenizer", "bpe one", "prepare the data again"]),
}


@pytest.fixture(scope="module")
def edited_runs(workdir):
    clean = prepared_bpe(workdir / "clean", vocab_size=320)

    def run(case):
        folder = workdir / f"edited-{case.replace(' ', '-')}"
        shutil.copytree(clean, folder)
        EDITS[case][0](folder)
        return case, run_cli("gpt.train", "--data", folder, "--out", workdir / f"run-{folder.name}", "--device", "cpu",
                             "--max-iters", "1", "--quiet", cwd=workdir, timeout=300)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, EDITS))


@pytest.mark.parametrize("case", sorted(EDITS))
def test_a_tokenizer_file_edited_out_of_step_with_the_shards_is_one_line(edited_runs, workdir, case):
    assert_one_line_error(edited_runs[case], "gpt-train", *EDITS[case][1])
    assert not (workdir / f"run-edited-{case.replace(' ', '-')}").exists()
