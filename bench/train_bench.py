"""Training benchmarks on CPU, printed as JSON.

    python -m bench.train_bench [--corpus tinyshakespeare.txt] [--reference NANOGPT_CHECKOUT]
                                [--compile] [--repeat R] [--quality-time 140] [--skip-quality]

throughput: tokens/s of the 4-layer, 4-head, 128-channel model (context 64, batch 12: the
reference's CPU Shakespeare configuration, our `bench` preset), and its model FLOPs
utilisation against this machine's matrix-product peak in the precision that run computed
in, measured in the same run (`machine.matmul_peak_gflops`, fp32 and, where a run is in
bf16, bf16). Ours runs in gpt-train's default precision (`dtype` in the JSON: bf16 where
the CPU has it natively, else fp32), and where that is bf16 in fp32 as well; with
--compile each also compiled. With --reference (a karpathy/nanoGPT checkout, copied, never
modified) the reference trains the same configuration in the same run, taking turns with
ours --repeat times (in reverse order every other turn), and the JSON gives ours over the
reference: each turn's figure is the median of its per-step times after a fifth of the
steps for warm-up (the reference prints each iteration's time; ours logs tokens/s every 10
steps); `vs_reference` is best turn against best turn, `vs_reference_median` median
against median, and `vs_reference_paired` the median of the turns' own ratios, the figure a
slow spell of a shared machine moves least. Without --reference no ratio is given.

quality: bench.quality_bench's measurement of our trainer alone (`gpt-train`, cpu-small
preset, for --quality-time seconds; its final model scored on the held-out text; the loss
curve), and whether the loss the trainer reports reached this project's 1.75 goal.
bigram: val loss of the bigram baseline.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

from bench import quality_bench
from bench.common import dtype_name, emit, matmul_peak_gflops, mfu, new_result, read_metrics, steady, training_dtype
from data_prep.prepare import PrepareOptions, prepare
from gpt.config import ModelConfig
from gpt.model import build_model, count_parameters, flops_per_token
from gpt.train import train

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
QUALITY_TARGET = 1.75  # this project's goal for cpu-small in 140 s on a 2-core CPU: a target, not a measurement


def throughput(data: Path, tmp: Path, steps: int, name: str, options: dict) -> dict:
    out = tmp / name
    train("bench", {"data": str(data), "out": str(out), "device": "cpu", "max_iters": steps, "eval_interval": 10**9,
                    "log_interval": 10, "progress": False, **options}, overwrite=True, log=lambda s: None)
    rates = [r["tokens_per_s"] for r in read_metrics(out) if "tokens_per_s" in r]
    vocab_size = json.loads((data / "meta.json").read_text())["vocab_size"]
    cfg = ModelConfig(vocab_size=vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)  # the bench preset
    n_params = count_parameters(build_model(cfg))
    return {"tokens_per_s": round(statistics.median(steady(rates))), "flops_per_token": flops_per_token(cfg, n_params),
            "params": n_params}


def reference_throughput(copy: Path, steps: int) -> float:
    """The reference's tokens/s in its CPU configuration: the median of its per-iteration
    times after a fifth for warm-up (it evaluates at iteration 0 only)."""
    args = [*quality_bench.REFERENCE_ARGS, f"--max_iters={steps}", f"--lr_decay_iters={steps}",
            f"--eval_interval={10 * steps}", f"--out_dir={copy / 'out-throughput'}"]
    log, _wall = quality_bench.run([sys.executable, "train.py", quality_bench.REFERENCE_CONFIG, *args], cwd=copy)
    ms = [float(t) for t in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", log, re.MULTILINE)]
    if len(ms) < 10:
        raise SystemExit(f"train_bench: the reference printed {len(ms)} iteration times; is {copy} a nanoGPT checkout?")
    tokens_per_step = quality_bench.REFERENCE_BATCH * quality_bench.REFERENCE_CONTEXT
    return tokens_per_step / (statistics.median(steady(ms)) / 1000)


def against_reference(ours: list[float], reference: list[float]) -> dict:
    """Ours over the reference, both measured in this run, turn by turn."""
    return {"vs_reference": round(max(ours) / max(reference), 3),
            # the turns' medians too: on a shared machine one lucky turn moves the best
            "vs_reference_median": round(statistics.median(ours) / statistics.median(reference), 3),
            # and the median of each turn's own ratio, the two sides measured back to back:
            # the figure a slow spell moves least, as it slows both sides of a turn alike
            "vs_reference_paired": round(statistics.median(o / r for o, r in zip(ours, reference)), 3)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.train_bench", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--quality-time", type=float, default=140)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--compile", action="store_true", help="also measure throughput with torch.compile")
    p.add_argument("--reference", type=Path, metavar="PATH",
                   help="a karpathy/nanoGPT checkout, run side by side (copied, not modified)")
    p.add_argument("--repeat", type=int, default=1,
                   help="turns each side takes; the best of each is compared (default: 1)")
    args = p.parse_args()
    result = new_result()
    variants = {"throughput": {}}  # gpt-train's default precision: bf16 where the CPU has it natively
    if training_dtype({}, "cpu") != training_dtype({"dtype": "fp32"}, "cpu"):
        variants["throughput_fp32"] = {"dtype": "fp32"}
    if args.compile:
        variants |= {f"{name}_compiled": {**options, "compile": True} for name, options in variants.items()}
    dtypes = {name: training_dtype(options, "cpu") for name, options in variants.items()}
    # each precision's peak, so each run's utilisation divides by the rate its own products can reach
    peaks = {dtype_name(d): round(matmul_peak_gflops(d), 1) for d in sorted(set(dtypes.values()), key=dtype_name)}
    result["machine"]["matmul_peak_gflops"] = peaks
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        data = tmp / "data"
        prepare([args.corpus], data, PrepareOptions(workers=1, progress=False))
        copy = quality_bench.reference_copy(args.reference, tmp, args.corpus) if args.reference else None
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
                result["reference"] = {"source": f"karpathy/nanoGPT checkout {args.reference}",
                                       "args": quality_bench.REFERENCE_ARGS, "tokens_per_s": round(max(turns)),
                                       "turns": [round(t) for t in turns]}
                continue
            t = max(turns, key=lambda r: r["tokens_per_s"])
            t["dtype"] = dtype_name(dtypes[name])
            t["turns"] = [r["tokens_per_s"] for r in turns]
            t["mfu"] = mfu(t["tokens_per_s"], t["flops_per_token"], peaks[t["dtype"]])
            t["mfu_peak_gflops"] = peaks[t["dtype"]]
            if copy is not None:
                t |= against_reference(t["turns"], runs["reference"])
            result[name] = t
        bigram = train("bigram", {"data": str(data), "out": str(tmp / "bigram"), "device": "cpu", "progress": False},
                       log=lambda s: None)
        result["bigram"] = {"val_loss": round(bigram.val_loss, 4), "steps": bigram.step}
        if not args.skip_quality:
            measured = quality_bench.ours_quality(args.corpus, tmp, args.quality_time, [])
            ours = measured["ours"]
            result["quality"] = {"preset": "cpu-small", "max_time_s": args.quality_time, **ours,
                                 "held_out": measured["held_out"], "notes": measured["notes"],
                                 "target_val_loss": QUALITY_TARGET,
                                 "reached": ours["val_loss_reported"] <= QUALITY_TARGET}
    emit(result)


if __name__ == "__main__":
    main()
