"""Shared fixtures for the training tests: a small learnable corpus, prepared on disk."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from data_prep.prepare import PrepareOptions, prepare

ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, dropout=0.0, lr=3e-3,
                  warmup_iters=5, eval_interval=10, eval_windows=16, log_interval=5, progress=False)


def write_corpus(folder: Path, n_docs: int = 150, seed: int = 0) -> Path:
    """Short documents from a tiny grammar: structured enough to learn in a few steps."""
    rng = random.Random(seed)
    names, verbs, things = ["the cat", "a dog", "my friend", "the king"], ["sees", "likes", "eats", "finds"], ["bread", "the moon", "a fish", "water"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = [f"{rng.choice(names)} {rng.choice(verbs)} {rng.choice(things)}." for _ in range(rng.randint(3, 8))]
        (folder / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def prepared(tmp: Path, **corpus_kw) -> Path:
    out = tmp / "data"
    prepare([write_corpus(tmp / "corpus", **corpus_kw)], out, PrepareOptions(workers=1, progress=False))
    return out


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, prog: str, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "warning" not in l]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
