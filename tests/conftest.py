"""pytest's shared fixtures for every test under tests/ (pytest loads this file for the
whole suite), though only the data_prep tests (test_prepare*.py, test_shards.py) use them:
small corpora built in code (one of them shaped like OpenWebText), helpers that run
`prepare` and read its output back as text, and `run_cli` for `gpt-prepare` as a user runs
it. What the model, training and sampling tests share is in support.py."""
from __future__ import annotations

import io
import lzma
import random
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

import data_prep
from tests import support
from data_prep.prepare import PrepareOptions, prepare

WORDS = "the of and a to in is was for on that with as by at from his her an it were are which this be or has had".split()
EXTRA = ["naïve", "café", "Zürich", "—", "“quoted”", "€5", "東京", "🙂", "e\u0301", "\t", "\r\n"]


def make_document(rng: random.Random, index: int) -> str:
    words = [rng.choice(WORDS if rng.random() < 0.9 else EXTRA) for _ in range(rng.randint(30, 250))]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return f"Document {index}: " + "\n".join(lines) + "\n"


def tar_bytes(members: list[tuple[str, bytes]], format: int = tarfile.GNU_FORMAT, folders: tuple[str, ...] = ()) -> bytes:
    """A tar archive of (name, content) members after entries for `folders`, with fixed
    metadata so it is reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tar:
        for name in folders:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_500_000_000
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_500_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="session")
def owt_archives() -> dict[str, list[tuple[str, str]]]:
    """OpenWebText-shaped content: archive name -> its (member name, text) documents.
    120 documents in all, enough for the split by document."""
    rng = random.Random(1234)
    archives, index = {}, 0
    for a in range(1, 4):
        docs = []
        for _ in range(40):
            index += 1
            docs.append((f"{index:07d}-{rng.getrandbits(64):016x}.txt", make_document(rng, index)))
        archives[f"urlsf_subset00-{a}_data.xz"] = docs
    return archives


def owt_archive_bytes(docs: list[tuple[str, str]]) -> bytes:
    """One urlsf_subset*_data.xz file: an xz-compressed tar of .txt documents."""
    return lzma.compress(tar_bytes([(name, text.encode()) for name, text in docs]))


@pytest.fixture
def owt_folder(tmp_path, owt_archives) -> Path:
    """The OpenWebText release unpacked once: a folder of xz-compressed tars."""
    folder = tmp_path / "openwebtext"
    folder.mkdir()
    for name, docs in owt_archives.items():
        (folder / name).write_bytes(owt_archive_bytes(docs))
    return folder


@pytest.fixture
def owt_tar(tmp_path, owt_archives) -> Path:
    """The OpenWebText release as distributed: one tar holding the xz-compressed tars."""
    path = tmp_path / "openwebtext.tar"
    members = [(f"openwebtext/{name}", owt_archive_bytes(docs)) for name, docs in sorted(owt_archives.items())]
    path.write_bytes(tar_bytes(members, folders=("openwebtext",)))
    return path


@pytest.fixture
def owt_texts(owt_archives) -> list[str]:
    return [text for _name, docs in sorted(owt_archives.items()) for _member, text in docs]


@pytest.fixture
def prepare_data(tmp_path):
    """prepare(inputs) into a new folder under tmp_path with test-friendly defaults
    (one worker, no progress bar); returns (summary, loaded data)."""
    made = 0

    def run(*inputs, out: Path | None = None, **options):
        nonlocal made
        made += 1
        out = out or tmp_path / f"data{made}"
        opts = PrepareOptions(**{"workers": 1, "progress": False, **options})
        summary = prepare([str(i) for i in inputs], out, opts)
        return summary, data_prep.load(out)

    return run


def split_documents(data: data_prep.PreparedData, split: str) -> list[str]:
    """A split's token stream cut at its end-of-text tokens and decoded (strictly, so a
    broken UTF-8 sequence fails the test instead of becoming U+FFFD)."""
    ids = np.concatenate([np.asarray(a) for a in data.split(split)])
    tok = data.tokenizer
    ends = np.flatnonzero(ids == tok.eot_id)
    assert len(ends) and ends[-1] == len(ids) - 1, "a split must end with an end-of-text token"
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [tok.decode_bytes(ids[s:e].tolist()).decode("utf-8") for s, e in zip(starts, ends)]


@pytest.fixture
def read_documents():
    return split_documents


@pytest.fixture
def whole_documents():
    """Every input document, sorted, put back together from both splits: split by document,
    each is in one split; split inside the text, document i is train[i] + val[i] (for
    documents long enough to have both parts)."""

    def read(data: data_prep.PreparedData) -> list[str]:
        train, val = split_documents(data, "train"), split_documents(data, "val")
        if data.meta["split_mode"] == "text":
            assert len(train) == len(val)
            return sorted(t + v for t, v in zip(train, val))
        return sorted(train + val)

    return read


@pytest.fixture
def folder_bytes():
    """Every file of a folder as {relative path: bytes}."""

    def read(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    return read


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m data_prep.cli ARGS` in tmp_path; returns the completed process."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return support.run_cli("data_prep.cli", *args, cwd=tmp_path)

    return run
