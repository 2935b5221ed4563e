"""What the model, training and sampling tests share: a small learnable corpus prepared on
disk, a tiny trained model with its tokenizer, and running a command as a user would."""
from __future__ import annotations

import io
import lzma
import math
import os
import random
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

import data_prep
from data_prep import CharTokenizer
from data_prep.prepare import PrepareOptions, prepare
from gpt.config import ModelConfig
from gpt.kv_cache import KVCache
from gpt.model import build_model
from gpt.store.checkpoint import plain_state_dict, save_checkpoint
from gpt.train.batches import BatchSampler
from gpt.train.optim import make_optimizer

ROOT = Path(__file__).resolve().parents[1]

# max_time 0: no wall-clock budget, so the schedule depends on steps alone and runs repeat exactly
TINY_MODEL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, dropout=0.0, lr=3e-3,
                  warmup_iters=5, eval_interval=10, eval_windows=16, log_interval=5, progress=False, max_time=0)


class StepClock:
    """A stand-in for the `time` module whose perf_counter advances a fixed 0.01 s a reading,
    so time-budget tests do not depend on this machine's speed (set it as the trainer's)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.01
        return self.now


def untrained_loss(data: Path) -> float:
    """ln V: the loss of a model that has learned nothing (every token equally likely). The
    tiny model, 20 steps in, scores about 0.7 below it on `data`; 30 steps in, about 1.0."""
    return math.log(len(data_prep.load(data).tokenizer))


def tiny_run(data: Path, out: Path, device: str = "cpu", **options) -> dict:
    """train() options for the tiny model on `data` into `out` (CPU unless said otherwise)."""
    return {**TINY_MODEL, "data": str(data), "out": str(out), "device": device, **options}


def write_corpus(folder: Path, n_docs: int = 150, seed: int = 0) -> Path:
    """Short documents from a tiny grammar: structured enough to learn in a few steps."""
    rng = random.Random(seed)
    names, verbs, things = (["the cat", "a dog", "my friend", "the king"], ["sees", "likes", "eats", "finds"],
                            ["bread", "the moon", "a fish", "water"])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = [f"{rng.choice(names)} {rng.choice(verbs)} {rng.choice(things)}." for _ in range(rng.randint(3, 8))]
        (folder / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def prepared(tmp: Path, **corpus_kw) -> Path:
    out = tmp / "data"
    prepare([write_corpus(tmp / "corpus", **corpus_kw)], out, PrepareOptions(workers=1, progress=False))
    return out


# syllables that make words: accents, a combining mark, CJK and an emoji (a 4-byte character),
# so BPE tokens end inside characters and words are many (the corpus supports ~4,000 tokens)
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zu", "é", "ñö", "東", "京", "語", "🙂", "e\u0301"]


def unicode_document(rng: random.Random, index: int) -> str:
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(20, 120))]
    lines = [" ".join(words[i : i + 10]) for i in range(0, len(words), 10)]
    return f"Doc {index}: " + "\n".join(lines) + ".\n"


def write_unicode_corpus(folder: Path, n_docs: int = 150, seed: int = 0) -> Path:
    """Documents of made-up words in several scripts: text for a BPE to learn a few hundred
    tokens from, with multi-byte characters everywhere."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (folder / f"doc{i:03d}.txt").write_text(unicode_document(rng, i), encoding="utf-8")
    return folder


def prepared_bpe(tmp: Path, vocab_size: int = 320, **options) -> Path:
    """write_unicode_corpus prepared with a byte-level BPE of `vocab_size` tokens."""
    out = tmp / "bpe-data"
    prepare([write_unicode_corpus(tmp / "unicode-corpus")], out,
            PrepareOptions(workers=1, progress=False, tokenizer="bpe", vocab_size=vocab_size, **options))
    return out


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child `python`: this checkout first on its path, then whatever
    path the caller had (packages installed beside the environment, as on a machine where
    they were put on PYTHONPATH, must stay importable in the child)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 120, stdin: str | None = None,
            file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` (a command: data_prep.cli, gpt.train, gpt.sample) with this
    checkout's packages, as a user would run it. `file_size_limit`: bytes any file it writes
    may hold (`ulimit -f`), beyond which writes fail as on a full disk."""
    env = child_env()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env, input=stdin, preexec_fn=limit if file_size_limit else None)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has this id (until the system hands it out again)


def assert_one_line_error(proc: subprocess.CompletedProcess, prog: str, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "warning" not in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# -- a tiny model, for the model and sampling tests ------------------------------------------
DOCUMENTS = [
    "the cat sat on the mat. ",
    "a dog ran to the park and sat. ",
    "to be or not to be, that is the question. ",
    "the rain in spain stays mainly on the plain. ",
]
BLOCK = 16


def train_tiny_model(pos: str = "rope", kind: str = "gpt", oov: str = "byte", steps: int = 60, block_size: int = BLOCK,
                     **model_options):
    """A 2-layer model trained briefly on DOCUMENTS (separated by end-of-text tokens), with the
    training code's own batch sampler and optimizer; in memory, no run folder. `block_size`:
    the model's context (it is trained on windows of BLOCK tokens whatever it is).
    `model_options`: other ModelConfig fields (qk_norm=True, ...)."""
    torch.manual_seed(0)
    tok = CharTokenizer(chars=sorted(set("".join(DOCUMENTS))), oov=oov)
    stream = []
    for doc in DOCUMENTS * 8:
        stream += tok.encode(doc) + [tok.eot_id]
    cfg = ModelConfig(kind=kind, vocab_size=len(tok), block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                      dropout=0.0, pos=pos, **model_options)
    model = build_model(cfg)
    batches = BatchSampler([np.array(stream, np.uint8)], BLOCK, batch_size=16, seed=0, vocab_size=len(tok))
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.99), device=torch.device("cpu"))
    for _ in range(steps):
        x, y = batches.next()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok, cfg


def assert_fixed_decode_matches_plain(model, steps: int, **tolerance) -> None:
    """The model given a position tensor (the fixed-shape step a CUDA graph replays) against
    the plain cached step, token by token after the same 5-token prompt in two caches of
    batch 2; the caller keeps the fixed cache's length, and the plain step's shows where
    both wrote."""
    torch.manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (2, 5))
    plain, fixed = (KVCache.for_model(model, 2, "cpu", torch.float32) for _ in range(2))
    with torch.inference_mode():
        model(prompt, cache=plain)
        model(prompt, cache=fixed)
        for pos in range(5, 5 + steps):
            token = torch.tensor([[pos], [pos + 1]])
            expected, _ = model(token, cache=plain)
            torch.testing.assert_close(model(token, cache=fixed, pos=torch.tensor(pos))[0], expected, **tolerance)
            assert plain.length == pos + 1


def write_checkpoint(run_dir: Path, model, tok: CharTokenizer, cfg: ModelConfig) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "best.pt"
    save_checkpoint(path, {"model_config": cfg.to_dict(), "model": plain_state_dict(model), "tokenizer": tok.to_json()})
    return path


# -- corpora built in code, shaped like OpenWebText (the data_prep tests) --------------------------
WORDS = ("the of and a to in is was for on that with as by at from his her an it were are which this be or "
         "has had").split()
EXTRA = ["naïve", "café", "Zürich", "—", "“quoted”", "€5", "東京", "🙂", "e\u0301", "\t", "\r\n"]


def make_document(rng: random.Random, index: int) -> str:
    words = [rng.choice(WORDS if rng.random() < 0.9 else EXTRA) for _ in range(rng.randint(30, 250))]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return f"Document {index}: " + "\n".join(lines) + "\n"


def tar_bytes(members: list[tuple[str, bytes]], format: int = tarfile.GNU_FORMAT,
              folders: tuple[str, ...] = ()) -> bytes:
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


def owt_archive_bytes(docs: list[tuple[str, str]]) -> bytes:
    """One urlsf_subset*_data.xz file: an xz-compressed tar of .txt documents."""
    return lzma.compress(tar_bytes([(name, text.encode()) for name, text in docs]))


def split_documents(data: data_prep.PreparedData, split: str) -> list[str]:
    """A split's token stream cut at its end-of-text tokens and decoded (strictly, so a
    broken UTF-8 sequence fails the test instead of becoming U+FFFD)."""
    ids = np.concatenate([np.asarray(a) for a in data.split(split)])
    tok = data.tokenizer
    ends = np.flatnonzero(ids == tok.eot_id)
    assert len(ends) and ends[-1] == len(ids) - 1, "a split must end with an end-of-text token"
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [tok.decode_bytes(ids[s:e].tolist()).decode("utf-8") for s, e in zip(starts, ends)]


# -- text that visits all of Unicode (the tokenizer tests) ------------------------------------
VOCAB_TEXT = "the quick brown fox jumps over the lazy dog\n\r\t\0 ÉéàçñüßøπΩжЖ東京日本語한국어🙂e\u0301"


def varied_text(n_chars: int, seed: int = 0) -> str:
    """Text that visits every plane of Unicode, emoji, combining marks, CJK, control
    characters, CRLF and NUL; lone surrogates are left out, as the data pipeline replaces
    them (a library cannot take them at all)."""
    rng = random.Random(seed)
    pieces = ["\r\n", "\0", "\t", "\x7f", "\x85", "\u2028", "e\u0301\u0302", "🙂", "👩\u200d💻", "🇫🇷", "東京", "\ufeff",
              "\ufffd", " ", "  "]
    ranges = [(0x20, 0x7E), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x1FFFF), (0x20000, 0x3FFFF),
              (0xE0000, 0x10FFFF)]
    out, size = [], 0
    while size < n_chars:
        r = rng.random()
        if r < 0.5:
            s = rng.choice(VOCAB_TEXT)
        elif r < 0.7:
            s = rng.choice(pieces)
        else:
            lo, hi = rng.choice(ranges)
            s = chr(rng.randint(lo, hi))
        out.append(s)
        size += len(s)
    return "".join(out)
