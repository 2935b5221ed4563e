"""`--tokenizer char` (the default) writes exactly what it wrote before BPE existed: the
digests below are of folders made by the code before the BPE work (commit ca4349f), from
corpora built here, so old folders, new folders and every run made on either stay
interchangeable byte for byte."""
import hashlib
import random
from pathlib import Path

import pytest

from data_prep.prepare import PrepareOptions, prepare
from tests.helpers import make_document, write_corpus

BEFORE_BPE = {
    "docs": {"meta.json": "9e5566ce1cbc0232", "tokenizer.json": "db54dec7329233cb",
             "train_0000.bin": "d46eb0a92667adb3", "val_0000.bin": "405cbf68f92b880f"},
    "mixed": {"meta.json": "17b474c03a9f7fc6", "tokenizer.json": "c1a144ca86ab280d",
              "train_0000.bin": "6cb1b4b8ad6ad364", "val_0000.bin": "92e2f978a389e54f"},
    "unk": {"meta.json": "72803194529b55cd", "tokenizer.json": "6f0a010f91b7a1dd",
            "train_0000.bin": "07e115ef55871af6", "val_0000.bin": "4866397aa3756f62"},
    "one": {"meta.json": "a284c1430a43e106", "tokenizer.json": "76526ddd65140323",
            "train_0000.bin": "7901c799ad9e2335", "val_0000.bin": "b943027ce340b616"},
}
CASES = {
    "docs": (["docs"], {}),  # ASCII documents, split by document, no fallback needed
    "mixed": (["mixed"], {"min_char_count": 30}),  # rare characters through byte fallback
    "unk": (["mixed"], {"min_char_count": 30, "oov": "unk"}),
    "one": (["one.txt"], {}),  # one file: split inside the text
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    write_corpus(root / "docs")
    rng = random.Random(7)
    (root / "mixed").mkdir()
    for i in range(120):
        (root / "mixed" / f"m{i:03d}.txt").write_text(make_document(rng, i), encoding="utf-8")
    (root / "one.txt").write_text("".join(make_document(rng, i) for i in range(5)), encoding="utf-8")
    return root


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_character_folder_is_byte_for_byte_what_it_was_before_bpe(case, corpora, monkeypatch):
    monkeypatch.chdir(corpora)  # meta.json names the inputs as given: relative, so the same everywhere
    inputs, options = CASES[case]
    prepare(inputs, f"out-{case}", PrepareOptions(workers=1, progress=False, **options))
    made = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(Path(f"out-{case}").iterdir())}
    assert made == BEFORE_BPE[case]
