"""Time to quality: named training recipes, each in a fresh `gpt-train` process under one
wall-clock budget on one prepared corpus, printed as JSON: the best val loss, when it was
reached, and when the run first reached --target.

    python -m bench.time_to_quality DATA --recipes baby-gpt,wide-muon [--max-time 60] [--target 1.42]

DATA is a folder `gpt-prepare` wrote. The clock is the trainer's own (`elapsed` in
metrics.jsonl): it starts before the first step, so compilation and every evaluation are
inside the budget; the process's wall time (start-up, loading, the final save) is reported
beside it. The recipes run one after another, never together, so each has the machine alone.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

# Each recipe is gpt-train's own options, so a winner becomes a preset by copying its line.
WIDE = ["--n-layer", "8", "--n-head", "8", "--n-embd", "512"]
RECIPES = {
    "baby-gpt": ["--preset", "baby-gpt"],  # the GPU default: AdamW, dropout 0.2, EMA 0.99
    "baby-muon": ["--preset", "baby-gpt", "--optimizer", "muon", "--dropout", "0.3"],
    "wide-muon": ["--preset", "baby-gpt", "--optimizer", "muon", *WIDE, "--dropout", "0.3"],
    "wide-adamw": ["--preset", "baby-gpt", *WIDE, "--dropout", "0.3"],
    # a tiny model: checks this script on a CPU in seconds
    "smoke": ["--preset", "cpu-small", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--eval-interval", "20"],
}


def run_recipe(name: str, data: Path, out: Path, device: str, max_time: float, target: float,
               compile: bool) -> dict:
    cmd = [sys.executable, "-m", "gpt.train", *RECIPES[name], "--data", str(data), "--out", str(out),
           "--device", device, "--max-time", str(max_time), "--max-iters", "1000000", "--patience", "0",
           "--quiet", *(["--compile"] if compile else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"recipe": name, "options": RECIPES[name], "error": proc.stderr.strip()[-2000:]}
    records = common.read_metrics(out)
    evals = [r for r in records if "val_loss" in r]
    rates = common.steady([r["tokens_per_s"] for r in records if "tokens_per_s" in r])
    best = min(evals, key=lambda r: r["val_loss"])
    reached = next((r for r in evals if r["val_loss"] <= target), None)
    return {"recipe": name, "options": RECIPES[name], "process_wall_s": round(wall, 1),
            "steps": records[-1]["step"], "train_s": round(records[-1]["elapsed"], 1),
            "tokens_per_s": round(sum(rates) / len(rates)) if rates else None,
            "first_eval_s": round(evals[0]["elapsed"], 1),
            "best_val": round(best["val_loss"], 4), "best_val_step": best["step"],
            "best_val_elapsed_s": round(best["elapsed"], 1), "final_val": round(evals[-1]["val_loss"], 4),
            "target_val": target, "time_to_target_s": round(reached["elapsed"], 1) if reached else None,
            "val_curve": [[r["step"], round(r["elapsed"], 1), round(r["val_loss"], 4)] for r in evals]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.time_to_quality", description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, help="a folder gpt-prepare wrote")
    p.add_argument("--recipes", default="baby-gpt", help=f"comma-separated, from {', '.join(RECIPES)}")
    p.add_argument("--max-time", type=float, default=60.0, help="each run's budget in seconds (default: 60)")
    p.add_argument("--target", type=float, default=1.42, help="the val loss whose time to reach is reported")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-compile", action="store_true", help="train eagerly")
    p.add_argument("--keep", type=Path, help="keep the run folders under this folder")
    args = p.parse_args(argv)
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipe {unknown[0]!r} (choose from {', '.join(RECIPES)})")
    report = common.new_result()
    report.update(corpus=str(args.data), max_time_s=args.max_time, device=args.device, runs=[])
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.keep or Path(tmp)
        for name in names:
            result = run_recipe(name, args.data, runs / name, args.device, args.max_time, args.target,
                                not args.no_compile)
            print(json.dumps({k: v for k, v in result.items() if k != "val_curve"}), file=sys.stderr,
                  flush=True)
            report["runs"].append(result)
    scored = [r for r in report["runs"] if "best_val" in r]
    report["best"] = min(scored, key=lambda r: r["best_val"])["recipe"] if scored else None
    common.emit(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
