"""Every fixture of the suite (helpers that are plain functions are in helpers.py): small
corpora built in code (one of them shaped like OpenWebText), `prepare` with test-friendly
defaults, the learnable corpus prepared once per module, and one thread for small models."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
import torch

import data_prep
from data_prep.prepare import PrepareOptions, prepare
from tests import helpers
from tests.helpers import make_document, owt_archive_bytes, prepared, split_documents, tar_bytes


def pytest_configure(config):
    """Under pytest-xdist, each worker takes its share of the cores, for its own torch threads,
    for the commands it runs (OMP_NUM_THREADS is inherited) and for torch.compile's compile
    workers: on a 16-core GPU machine, 16 workers each running 16 OpenMP threads and 16
    compile processes crawled (a suite of 8 minutes on 2 cores was not done after 8 minutes
    there). A value the caller set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    for name in ("OMP_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS"):
        os.environ.setdefault(name, share)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
def prepare_cli(tmp_path):
    """Run `python -m data_prep.cli ARGS` in tmp_path; returns the completed process."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return helpers.run_cli("data_prep.cli", *args, cwd=tmp_path)

    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The learnable corpus, prepared once per test module that uses it."""
    return prepared(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def one_thread():
    """Used by a module with `pytestmark = pytest.mark.usefixtures("one_thread")`: models this small run fastest on
    one thread, and do not slow to a crawl when other processes hold the cores (OpenMP threads waiting on each
    other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- gpt-serve -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serve_run(tmp_path_factory) -> Path:
    """A run folder holding the tiny trained model, with a context of 64 tokens."""
    model, tok, cfg = helpers.train_tiny_model(steps=60, block_size=64)
    run = tmp_path_factory.mktemp("serve") / "tiny"
    helpers.write_checkpoint(run, model, tok, cfg)
    return run


@pytest.fixture(scope="module")
def server(serve_run):
    """gpt-serve on 127.0.0.1 at a free port, serving the tiny model as "tiny", batches of 16."""
    from tests.live_server import LiveServer

    with LiveServer(serve_run, max_batch=16) as live:
        yield live
