"""Characters against byte-level BPE at a few vocabulary sizes, at equal training time,
printed as JSON (and as a Markdown table on stderr).

    python -m bench.tokenizer_bench [CORPUS ...] [--vocab-sizes 512 2048 8192] [--train-time 120]
                                    [--preset cpu-small] [--eval-chars 200000] [--workers 0]

For each corpus (default: ../shared/corpora/tinyshakespeare.txt and ../shared/corpora/owt-sample)
and each tokenizer (char, then bpe at each --vocab-sizes):

- prepare: `gpt-prepare` wall time and each split's tokens per character;
- train: `gpt-train --preset PRESET --max-time TRAIN_TIME` (the same model, batch and time
  for every tokenizer: the context is the same in tokens, so longer in characters for BPE),
  steps, tokens/s and characters/s (tokens/s over tokens per character), and the last val
  bits per character training logged;
- eval: `gpt-eval` bits per character of every run on one and the same text: the first
  --eval-chars characters of the val split's documents (decoded from the char folder), so
  every number is on identical text, encoded by each run's own tokenizer.

Run it on a quiet machine (the load average is recorded); one run is corpora x (1 + sizes)
x train time, about 20 minutes with the defaults. Each row is also printed to stderr as one
JSON line when it is done, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import data_prep
from bench.common import PROVENANCE, ROOT, emit, new_result, read_metrics, steady
from data_prep.prepare import PrepareOptions, prepare
from gpt.evaluate.evaluate import evaluate, load_run
from gpt.evaluate.text import TextStream
from gpt.train import train
from plumbing.errors import UserError

CORPORA = ROOT.parent / "shared" / "corpora"
DEFAULT_CORPORA = [CORPORA / "tinyshakespeare.txt", CORPORA / "owt-sample"]


def prepared(corpus: Path, out: Path, tokenizer: str, vocab_size: int | None, workers: int) -> dict:
    t0 = time.perf_counter()
    prepare([corpus], out,
            PrepareOptions(workers=workers, progress=False, tokenizer=tokenizer, vocab_size=vocab_size))
    seconds = time.perf_counter() - t0
    data = data_prep.load(out)
    return {"prepare_s": round(seconds, 2), "vocab_size": len(data.tokenizer),
            "tokens_per_char": {s: round(data.tokens_per_character(s), 4) for s in ("train", "val")}}


def eval_text(data_dir: Path, out: Path, n_chars: int) -> Path:
    """The first n_chars characters of the val split, its documents joined by blank lines, as
    one text file: the same text for every run."""
    data = data_prep.load(data_dir)
    ids = np.concatenate([np.asarray(a) for a in data.split("val")])[: n_chars * 4]
    eot = data.tokenizer.eot_id
    # cut before each end-of-text token: every document but the first follows a blank line
    documents = np.split(ids, np.flatnonzero(ids == eot))
    text = "\n\n".join(data.tokenizer.decode(d[d != eot].tolist()) for d in documents)[:n_chars]
    out.write_text(text, encoding="utf-8")
    return out


def trained(data: Path, out: Path, preset: str, seconds: float) -> dict:
    result = train(preset, {"data": str(data), "out": str(out), "device": "cpu", "max_time": seconds,
                            "max_iters": None, "progress": False}, log=lambda s: None)
    records = read_metrics(out)
    speeds = steady([r["tokens_per_s"] for r in records if "tokens_per_s" in r])
    if not speeds:  # a rate is logged every log_interval steps; a run shorter than that has none
        raise SystemExit(f"tokenizer_bench: {result.step} steps in {seconds} s logged no tokens/s: "
                         f"give --train-time more")
    evals = [r for r in records if "val_bpc" in r]
    return {"steps": result.step, "tokens_per_s": round(sum(speeds) / len(speeds)),
            "val_bpc_logged": round(evals[-1]["val_bpc"], 4)}


def scored(run: Path, text: Path) -> dict:
    loaded = load_run(run, torch.device("cpu"))
    score = evaluate(loaded, TextStream([str(text)], loaded.tokenizer)).score
    return {"bits_per_char": round(score.bits_per_char, 4), "tokens": score.tokens, "characters": score.characters,
            "context_chars": round(loaded.context * score.characters / max(score.tokens, 1))}


def markdown(results: list[dict]) -> str:
    header = ("corpus", "tokenizer", "vocab", "prepare s", "tokens/char (val)", "steps", "tokens/s", "chars/s",
              "val bits/char (gpt-eval)", "logged val bits/char")
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['corpus']} | {r['tokenizer']} | {r.get('vocab_size_asked', '')} | {r['error']} "
                        f"| | | | | | |")
            continue
        rows.append(f"| {r['corpus']} | {r['tokenizer']} | {r['vocab_size']} | {r['prepare_s']} "
                    f"| {r['tokens_per_char']['val']} | {r['train']['steps']} | {r['train']['tokens_per_s']:,} "
                    f"| {r['train']['chars_per_s']:,} | {r['eval']['bits_per_char']} "
                    f"| {r['train']['val_bpc_logged']} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.tokenizer_bench", description=__doc__.splitlines()[0])
    p.add_argument("corpora", nargs="*", type=Path, default=DEFAULT_CORPORA)
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--train-time", type=float, default=120)
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--eval-chars", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=0, help="gpt-prepare's workers (0: all cores)")
    args = p.parse_args()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "corpora"}
    out = new_result() | {"settings": settings, "results": []}
    provenance = {key: out[key] for key in PROVENANCE}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for c, corpus in enumerate(args.corpora):
            text = None
            for tokenizer, size in [("char", None), *(("bpe", n) for n in args.vocab_sizes)]:
                name = f"{c}-{tokenizer}{size or ''}"
                row = {"corpus": corpus.name, "tokenizer": tokenizer, "vocab_size_asked": size}
                try:
                    row.update(prepared(corpus, tmp / name / "data", tokenizer, size, args.workers))
                except UserError as e:  # a vocabulary larger than the corpus supports, say
                    out["results"].append({**row, "error": str(e)})
                    continue
                text = text or eval_text(tmp / name / "data", tmp / f"{c}-eval.txt", args.eval_chars)
                row["train"] = trained(tmp / name / "data", tmp / name / "run", args.preset, args.train_time)
                row["train"]["chars_per_s"] = round(row["train"]["tokens_per_s"] / row["tokens_per_char"]["train"])
                row["eval"] = scored(tmp / name / "run", text)
                out["results"].append(row)
                emit(provenance | row, indent=None, file=sys.stderr)
    emit(out)
    print(markdown(out["results"]), file=sys.stderr)
    assert all(math.isfinite(r["eval"]["bits_per_char"]) for r in out["results"] if "eval" in r)


if __name__ == "__main__":
    main()
