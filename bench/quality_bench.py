"""Quality against the reference implementation in the same wall-clock time, printed as JSON.

    python -m bench.quality_bench CORPUS --reference PATH [--ours-args "--qk-norm --optimizer muon"]
    python -m bench.quality_bench CORPUS [--max-time 141]       # ours alone; the reference's figures quoted

With --reference (a checkout of karpathy/nanoGPT; it is copied, never modified): the copy's
`data/shakespeare_char/prepare.py` prepares CORPUS (its input.txt: a character vocabulary, the
first 90% of characters for training, the last 10% for val), then its CPU Shakespeare
configuration trains (REFERENCE_ARGS, 2000 iterations) and its wall time is recorded; then
`gpt-train` trains on CORPUS (prepared by gpt-prepare; the cpu-small preset plus --ours-args)
with --max-time equal to that wall time.

Both final models are then scored on the same held-out text: the reference's val characters
(those our training split does not hold either), in the same non-overlapping windows of the
shorter of the two contexts, every position scored, each model through its own vocabulary.
Both vocabularies map one character to one token, so the two losses are nats per character
over exactly the same predictions. The losses each trainer reports itself are in the JSON
too, but do not compare: the reference's is the mean of 20 random batches of its val split,
ours is its fixed validation windows of our val split (the same text, one character later).

Without --reference nothing of the reference runs: our run gets --max-time seconds (default
141), scored on the same held-out text in the reference's 64-character windows, and the
reference's figures from an earlier run elsewhere (Tiny Shakespeare, val loss 1.886 after
100-141 s on a 2-core AMD EPYC) are quoted beside it with their source. No ratio is made of
them: they were measured on another machine, and that loss is the reference's own estimate,
not one scored on the held-out text as ours is.

`ours_quality` is the one measurement of our trainer's quality in a time budget;
bench.train_bench's quality section calls it. --reference-iters N shortens the reference
run (for checking this script; the numbers then mean nothing). The tokens/s of both runs
are training tokens over the run's whole wall time.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import PROVENANCE, child_env, emit, git_commit, new_result, quoted, read_metrics, write_json
from gpt.store.layout import LATEST
from gpt.store.load import load_any_model

REFERENCE_CONFIG = "config/train_shakespeare_char.py"
REFERENCE_DATA = Path("data/shakespeare_char")
REFERENCE_ITERS = 2000
REFERENCE_CONTEXT, REFERENCE_BATCH = 64, 12
REFERENCE_ARGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
                  f"--block_size={REFERENCE_CONTEXT}", f"--batch_size={REFERENCE_BATCH}", "--n_layer=4", "--n_head=4",
                  "--n_embd=128", "--dropout=0.0"]
VAL_START = 0.9  # the reference's prepare.py: data[:int(n * 0.9)] trains, the rest is val
TINY_SHAKESPEARE_CHARACTERS = 1115394
QUOTED_WALL_S = (100, 141)


def quoted_reference() -> dict:
    """The reference's figures from an earlier run elsewhere, for reading beside ours."""
    steps, tokens_per_step = REFERENCE_ITERS, REFERENCE_BATCH * REFERENCE_CONTEXT
    figures = {"val_loss_reported": 1.886, "wall_s_range": list(QUOTED_WALL_S), "steps": steps,
               "tokens_per_step": tokens_per_step, "corpus_characters": TINY_SHAKESPEARE_CHARACTERS,
               "tokens_per_s_range": [round(steps * tokens_per_step / w) for w in reversed(QUOTED_WALL_S)]}
    return quoted(figures, "karpathy/nanoGPT's CPU Shakespeare configuration (REFERENCE_ARGS, 2000 iterations) "
                           "on Tiny Shakespeare, run on a 2-core AMD EPYC VM on or before 2026-11-23 (figures "
                           "written into bench/train_bench.py that day); the loss is its own val estimate, the mean "
                           "of 20 random batches of its val split, not scored on the held-out text")


def run(cmd: list[str], cwd: Path | None = None) -> tuple[str, float]:
    """Run a command; its stdout and wall time. A failure ends the benchmark with its stderr."""
    env = {**child_env(), "PYTHONUTF8": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"quality_bench: {' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


# -- the reference ---------------------------------------------------------------------------
def reference_copy(checkout: Path, tmp: Path, corpus: Path) -> Path:
    """A copy of the checkout (without .git) with CORPUS as its input.txt, prepared by its own
    prepare.py. That script imports `requests` only to download a missing input.txt; a stub
    stands in where it is not installed."""
    if not (checkout / REFERENCE_CONFIG).is_file() or not (checkout / REFERENCE_DATA / "prepare.py").is_file():
        raise SystemExit(f"quality_bench: {checkout} is not a nanoGPT checkout "
                         f"(no {REFERENCE_CONFIG} or {REFERENCE_DATA}/prepare.py)")
    copy = tmp / "reference"
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "out*"))
    shutil.copyfile(corpus, copy / REFERENCE_DATA / "input.txt")
    stub = ("import sys, types, runpy\n"
            "try:\n    import requests\n"
            "except ImportError:\n    sys.modules['requests'] = types.ModuleType('requests')\n"
            f"runpy.run_path({str(REFERENCE_DATA / 'prepare.py')!r}, run_name='__main__')\n")
    run([sys.executable, "-c", stub], cwd=copy)
    return copy


def train_reference(copy: Path, iters: int) -> dict:
    out = copy / "out-bench"
    # always_save_checkpoint: the final model is kept, for scoring on the held-out text
    args = [*REFERENCE_ARGS, f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={min(250, iters)}",
            f"--out_dir={out}", "--always_save_checkpoint=True"]
    log, wall = run([sys.executable, "train.py", REFERENCE_CONFIG, *args], cwd=copy)
    steps = len(re.findall(r"^iter \d+:", log, re.MULTILINE))
    evals = re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", log, re.MULTILINE)
    tokens = steps * REFERENCE_BATCH * REFERENCE_CONTEXT
    return {"args": [REFERENCE_CONFIG, *args], "wall_s": round(wall, 1), "steps": steps, "tokens": tokens,
            "tokens_per_s": round(tokens / wall), "val_loss_reported": float(evals[-1][1]) if evals else None,
            "val_loss_reported_at_step": int(evals[-1][0]) if evals else None}


def reference_model(copy: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("nanogpt_model", copy / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = torch.load(copy / "out-bench" / "ckpt.pt", map_location="cpu", weights_only=True)
    with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter count; stdout is the JSON
        model = module.GPT(module.GPTConfig(**state["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state["model"].items()})
    return model.eval()


# -- ours ------------------------------------------------------------------------------------
def train_ours(corpus: Path, tmp: Path, max_time: float, ours_args: list[str]) -> dict:
    """gpt-prepare and gpt-train on CORPUS, as a user runs them; the final model and the run's figures."""
    data, out = tmp / "ours-data", tmp / "ours-run"
    run([sys.executable, "-m", "data_prep.cli", str(corpus), "--out", str(data), "--quiet"])
    args = ["--device", "cpu", "--max-time", f"{max_time:.1f}", *ours_args]
    _, wall = run([sys.executable, "-m", "gpt.train", "--data", str(data), "--out", str(out), "--quiet", *args])
    model, tokenizer, _, state = load_any_model(out / LATEST)  # the final model, as the reference's is
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    curve = [(r["step"], round(r["elapsed"], 1), round(r["val_loss"], 4)) for r in read_metrics(out) if "val_loss" in r]
    return {"args": args, "wall_s": round(wall, 1), "trainer_elapsed_s": round(state["elapsed"], 1),
            "steps": state["step"], "tokens": state["tokens"], "tokens_per_s": round(state["tokens"] / wall),
            "val_loss_reported": round(state["val_loss"], 4), "curve_step_elapsed_valloss": curve,
            "model": (model, tokenizer), "meta": meta}


# -- scoring ---------------------------------------------------------------------------------
@torch.inference_mode()
def held_out_loss(model: torch.nn.Module, ids: np.ndarray, window: int, batch: int = 64) -> float:
    """Mean nats per token over non-overlapping windows of `window` tokens, every position
    scored (as both trainers score their validation windows)."""
    n = (len(ids) - 1) // window
    x = torch.from_numpy(ids[: n * window].astype(np.int64)).view(n, window)
    y = torch.from_numpy(ids[1 : n * window + 1].astype(np.int64)).view(n, window)
    total = 0.0
    for i in range(0, n, batch):
        _, loss = model(x[i : i + batch], y[i : i + batch])
        total += float(loss) * len(x[i : i + batch])
    return total / n


def held_out_start(text: str, meta: dict) -> tuple[int, str | None]:
    """Where the held-out text begins: the reference's val split, less what our training split
    holds of it (for one document split inside the text, ours ends a character later)."""
    start = int(len(text) * VAL_START)
    if meta["split_mode"] == "text" and meta["splits"]["train"]["documents"] == 1:
        return max(start, meta["splits"]["train"]["characters"]), None
    return start, (f"our data was split by document (split_mode {meta['split_mode']}): our training split may hold "
                   "parts of the reference's val text, so the held-out comparison favours ours")


def ours_quality(corpus: Path, tmp: Path, max_time: float, ours_args: list[str],
                 window_at_most: int = REFERENCE_CONTEXT) -> dict:
    """Our trainer's quality in `max_time` seconds on CORPUS: the run's figures (`ours`), its
    final model's loss on the held-out text in windows of at most `window_at_most` tokens
    (the reference's context, so runs with and without the reference score alike), where
    that text lies (`held_out`), and what a reader must know (`notes`)."""
    text = corpus.read_text(encoding="utf-8")
    ours = train_ours(corpus, tmp, max_time, ours_args)
    model, tokenizer = ours.pop("model")
    start, note = held_out_start(text, ours.pop("meta"))
    notes = [note] if note else []
    held_out = text[start:]
    ids = np.asarray(tokenizer.encode(held_out), dtype=np.int64)
    if len(ids) != len(held_out) or tokenizer.decode(ids.tolist()) != held_out:
        notes.append("our vocabulary does not map the held-out text one character to one token: the losses are per "
                     "token of each vocabulary")
    window = min(model.config.block_size, window_at_most)
    ours["val_loss_held_out"] = round(held_out_loss(model, ids, window), 4)
    return {"ours": ours, "held_out": {"first_character": start, "characters": len(held_out), "window": window,
                                       "windows": (len(held_out) - 1) // window}, "notes": notes}


def kept_reference(folder: Path) -> dict | None:
    """The reference's run an earlier run of this script kept in `folder`, with that run's
    commit, date and machine (a file from before they were written holds the run alone)."""
    kept = folder / "reference.json"
    if not kept.is_file():
        return None
    stored = json.loads(kept.read_text(encoding="utf-8"))
    reference = stored.get("reference", stored)
    reference["kept_from"] = {key: stored[key] for key in PROVENANCE if key in stored} or str(kept)
    return reference


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.quality_bench", description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="one text file (Tiny Shakespeare for the quoted figures)")
    p.add_argument("--reference", type=Path, metavar="PATH",
                   help="a karpathy/nanoGPT checkout to run (copied, not modified)")
    p.add_argument("--ours-args", default="", metavar="ARGS",
                   help="options for our gpt-train, in one string (default: none, the cpu-small preset)")
    p.add_argument("--max-time", type=float, default=QUOTED_WALL_S[1],
                   help="our budget without --reference (default: %(default)s s)")
    p.add_argument("--keep-reference", type=Path, metavar="DIR",
                   help="keep the reference's run in DIR, and reuse it when DIR already holds one (for sweeping our "
                        "options on one corpus)")
    p.add_argument("--reference-iters", type=int, default=REFERENCE_ITERS,
                   help="reference iterations; fewer only to check this script")
    args = p.parse_args()
    text = args.corpus.read_text(encoding="utf-8")
    result = new_result()
    result |= {"corpus": str(args.corpus), "corpus_characters": len(text)}
    notes = []
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        ref_model = None
        if args.reference:
            reference = kept_reference(args.keep_reference) if args.keep_reference else None
            if reference is not None:  # a sweep: the reference ran once, on this corpus
                copy = args.keep_reference / "reference"
                notes.append(f"the reference's run was kept from an earlier run of this script "
                             f"({args.keep_reference / 'reference.json'}); its model is scored again here")
            else:
                copy = reference_copy(args.reference, args.keep_reference or tmp, args.corpus)
                reference = {"source": f"karpathy/nanoGPT checkout {args.reference}",
                             "checkout_commit": git_commit(args.reference),
                             **train_reference(copy, args.reference_iters)}
                if args.keep_reference is not None:
                    write_json(args.keep_reference / "reference.json",
                               {**{key: result[key] for key in PROVENANCE}, "reference": reference})
            ref_model = reference_model(copy)
            budget = reference["wall_s"]
            if args.reference_iters != REFERENCE_ITERS:
                notes.append(f"--reference-iters {args.reference_iters}: a check of this script, not the reference "
                             f"configuration")
        else:
            reference = quoted_reference()
            budget = args.max_time
            if len(text) != TINY_SHAKESPEARE_CHARACTERS:
                notes.append(f"the quoted figures are for Tiny Shakespeare ({TINY_SHAKESPEARE_CHARACTERS:,} "
                             f"characters); this corpus is another")
        window_at_most = ref_model.config.block_size if ref_model is not None else REFERENCE_CONTEXT
        measured = ours_quality(args.corpus, tmp, budget, shlex.split(args.ours_args), window_at_most)
        ours, held_out = measured["ours"], measured["held_out"]
        notes += measured["notes"]
        result["held_out"] = held_out
        if ref_model is not None:
            # the reference's ids of the same characters: its val.bin from the held-out start on
            start = held_out["first_character"]
            ref_val = np.fromfile(copy / REFERENCE_DATA / "val.bin", dtype=np.uint16)
            ref_ids = ref_val[start - int(len(text) * VAL_START) :]
            reference["val_loss_held_out"] = round(held_out_loss(ref_model, ref_ids, held_out["window"]), 4)
            result["comparison"] = "held-out loss of both final models on the same text and windows"
            result["val_loss_ratio_ours_over_reference"] = round(ours["val_loss_held_out"]
                                                                 / reference["val_loss_held_out"], 4)
        else:
            result["comparison"] = ("none: the reference did not run; its quoted figures come from another machine "
                                    "and are its own val estimate, so no ratio is made of them")
        result.update(reference=reference, ours=ours, notes=notes)
    emit(result)


if __name__ == "__main__":
    main()
