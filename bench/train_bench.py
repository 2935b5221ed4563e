"""Training benchmarks on CPU, printed as JSON.

    python bench/train_bench.py [--corpus tinyshakespeare.txt] [--reference NANOGPT_CHECKOUT]
                                [--compile] [--repeat R] [--quality-time 140] [--skip-quality]

throughput: tokens/s of the 4-layer, 4-head, 128-channel model (context 64, batch 12: the
reference's CPU Shakespeare configuration, our `bench` preset), and its model FLOPs
utilisation against this machine's fp32 matmul peak measured in the same run. Ours runs in
gpt-train's default precision (`dtype` in the JSON: bf16 where the CPU has it natively, else
fp32), and where that is bf16 in fp32 as well; with --compile each also compiled. With
--reference (a karpathy/nanoGPT checkout, copied, never modified) the reference trains the
same configuration in the same run, taking turns with ours --repeat times (in reverse
order every other turn), and the JSON gives ours over the reference: each turn's figure is
the median of its per-step times after a fifth of the steps for warm-up (the reference
prints each iteration's time; ours logs tokens/s every 10 steps); `vs_reference` is best
turn against best turn, `vs_reference_median` median against median, and
`vs_reference_paired` the median of the turns' own ratios, the figure a slow spell of a
shared machine moves least. quality: val loss after --quality-time seconds of `gpt-train --preset cpu-small`,
with the loss curve. bigram: val loss of the bigram baseline.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from data_prep.prepare import PrepareOptions, prepare
from gpt.config import ModelConfig
from gpt.device import native_bf16
from gpt.model import build_model, count_parameters, flops_per_token
from gpt.train import train
from machine import describe
from quality_bench import REFERENCE_ARGS, REFERENCE_CONFIG, reference_copy, run

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def matmul_peak(seconds: float = 3.0, n: int = 1024) -> float:
    """fp32 GFLOP/s of large square matrix products on all torch threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9


def metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def throughput(data: Path, tmp: Path, steps: int, name: str, options: dict) -> dict:
    out = tmp / name
    train("bench", {"data": str(data), "out": str(out), "device": "cpu", "max_iters": steps, "eval_interval": 10**9,
                    "log_interval": 10, "progress": False, **options}, overwrite=True, log=lambda s: None)
    logged = [r for r in metrics(out) if "tokens_per_s" in r]
    steady = logged[len(logged) // 5 :]  # the first fifth: warm-up (and compilation)
    cfg = ModelConfig(vocab_size=json.loads((data / "meta.json").read_text())["vocab_size"], block_size=64, n_layer=4, n_head=4, n_embd=128)
    n_params = count_parameters(build_model(cfg))
    return {"tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in steady)), "flops_per_token": flops_per_token(cfg, n_params),
            "params": n_params}


def reference_throughput(copy: Path, steps: int) -> float:
    """The reference's tokens/s in its CPU configuration: the median of its per-iteration
    times after a fifth for warm-up (it evaluates at iteration 0 only)."""
    args = [*REFERENCE_ARGS, f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={10 * steps}",
            f"--out_dir={copy / 'out-throughput'}"]
    log, _wall = run([sys.executable, "train.py", REFERENCE_CONFIG, *args], cwd=copy)
    ms = [float(t) for t in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", log, re.M)]
    if len(ms) < 10:
        raise SystemExit(f"train_bench: the reference printed {len(ms)} iteration times; is {copy} a nanoGPT checkout?")
    return 12 * 64 / (statistics.median(ms[len(ms) // 5 :]) / 1000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--quality-time", type=float, default=140)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--compile", action="store_true", help="also measure throughput with torch.compile")
    p.add_argument("--reference", type=Path, metavar="PATH", help="a karpathy/nanoGPT checkout, run side by side (copied, not modified)")
    p.add_argument("--repeat", type=int, default=1, help="turns each side takes; the best of each is compared (default: 1)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        data = tmp / "data"
        prepare([args.corpus], data, PrepareOptions(workers=1, progress=False))
        peak = matmul_peak()
        result = {"machine": {**describe(), "fp32_matmul_peak_gflops": round(peak, 1)}}
        copy = reference_copy(args.reference, tmp, args.corpus) if args.reference else None
        variants = {"throughput": {}}  # gpt-train's default precision: bf16 where the CPU has it natively
        if native_bf16():
            variants["throughput_fp32"] = {"dtype": "fp32"}
        if args.compile:
            variants |= {f"{name}_compiled": {**options, "compile": True} for name, options in variants.items()}
        runs: dict[str, list] = {}
        sides = (["reference"] if copy is not None else []) + list(variants)
        for turn in range(args.repeat):
            # the sides take turns, in reverse order every other turn (reference, ours, ours,
            # reference, ...): a slow spell of a shared machine, or a drift across the run,
            # then falls on each side about equally, and each turn's pair ran minutes apart at most
            for name in sides if turn % 2 == 0 else sides[::-1]:
                if name == "reference":
                    runs.setdefault(name, []).append(reference_throughput(copy, args.steps))
                else:
                    runs.setdefault(name, []).append(throughput(data, tmp, args.steps, name, variants[name]))
        for name, turns in runs.items():
            if name == "reference":
                result["reference"] = {"source": f"karpathy/nanoGPT checkout {args.reference}", "args": REFERENCE_ARGS,
                                       "tokens_per_s": round(max(turns)), "turns": [round(t) for t in turns]}
                continue
            t = max(turns, key=lambda r: r["tokens_per_s"])
            t["dtype"] = variants[name].get("dtype", "bf16" if native_bf16() else "fp32")
            t["turns"] = [r["tokens_per_s"] for r in turns]
            t["mfu"] = round(t["tokens_per_s"] * t["flops_per_token"] / (peak * 1e9), 3)
            if copy is not None:
                t["vs_reference"] = round(t["tokens_per_s"] / max(runs["reference"]), 3)
                # the turns' medians too: on a shared machine one lucky turn moves the best
                t["vs_reference_median"] = round(statistics.median(t["turns"]) / statistics.median(runs["reference"]), 3)
                # and the median of each turn's own ratio, the two sides measured back to back:
                # the figure a slow spell moves least, as it slows both sides of a turn alike
                t["vs_reference_paired"] = round(statistics.median(o / r for o, r in zip(t["turns"], runs["reference"])), 3)
            result[name] = t
        bigram = train("bigram", {"data": str(data), "out": str(tmp / "bigram"), "device": "cpu", "progress": False}, log=lambda s: None)
        result["bigram"] = {"val_loss": round(bigram.val_loss, 4), "steps": bigram.step}
        if not args.skip_quality:
            t0 = time.perf_counter()
            run = train("cpu-small", {"data": str(data), "out": str(tmp / "quality"), "device": "cpu", "max_time": args.quality_time,
                                       "progress": False}, log=lambda s: None)
            curve = [(r["step"], round(r["elapsed"], 1), round(r["val_loss"], 4)) for r in metrics(tmp / "quality") if "val_loss" in r]
            result["quality"] = {"preset": "cpu-small", "max_time_s": args.quality_time, "wall_s": round(time.perf_counter() - t0, 1),
                                 "steps": run.step, "val_loss": round(run.val_loss, 4), "target": 1.75, "reached": run.val_loss <= 1.75,
                                 "reference_val_loss_at_140s": 1.886, "curve_step_elapsed_valloss": curve}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
