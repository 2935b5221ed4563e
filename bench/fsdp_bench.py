"""DDP against FSDP (gpt-train --fsdp), with and without activation checkpointing: training
speed, and on a GPU the peak memory each process held against gpt-train --plan's estimate,
printed as JSON.

    python -m bench.fsdp_bench DATA [--processes N] [--preset baby-gpt] [--steps 60] [--device cuda]

Each configuration is one `torchrun --nproc_per_node=N -m gpt.train` run of --steps steps
(the first 10 not timed: compilation and warm-up); rank 0's metrics.jsonl gives tokens/s and,
on a GPU, the peak memory (torch.cuda.max_memory_allocated).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench import common
from data_prep import load
from gpt.device import resolve_device, resolve_dtype
from gpt.train.plan import measure_on_gpu, memory_plan
from gpt.train.presets import layered_config

MODES = {"ddp": [], "fsdp": ["--fsdp"], "ddp+ckpt": ["--activation-checkpointing"],
         "fsdp+ckpt": ["--fsdp", "--activation-checkpointing"], "ddp+compile": ["--compile"],
         "fsdp+compile": ["--fsdp", "--compile"]}
DEFAULT_MODES = "ddp,fsdp,ddp+ckpt,fsdp+ckpt"


def one(data: str, mode: str, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.processes}",
           "-m", "gpt.train", "--data", data, "--out", str(out), "--preset", args.preset, "--device", args.device,
           "--max-iters", str(args.steps), "--max-time", "0", "--eval-interval", str(args.steps),
           "--eval-windows", "64", "--log-interval", "5", "--optimizer", "adamw", "--quiet", *MODES[mode]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=common.child_env())
    if proc.returncode:
        return {"mode": mode, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    records = [r for r in common.read_metrics(out) if "tokens_per_s" in r and r["step"] > 10]
    row = {"mode": mode, "tokens_per_s": round(sum(r["tokens_per_s"] for r in records) / len(records))}
    if records and "peak_memory_mb" in records[-1]:
        row["measured_peak_mb"] = records[-1]["peak_memory_mb"]
    overrides = {"data": data, "device": args.device, "optimizer": "adamw", "fsdp": "fsdp" in mode,
                 "activation_checkpointing": "ckpt" in mode, "compile": "compile" in mode}
    cfg = layered_config(args.preset, overrides)
    device = resolve_device(args.device)
    vocab, dtype = len(load(data).tokenizer), resolve_dtype(cfg.dtype, device, training=True)
    measured = measure_on_gpu(cfg, vocab, dtype, device) if device.type == "cuda" else None
    plan = memory_plan(cfg, vocab, dtype, device.type, args.processes, fsdp="fsdp" in mode, measured=measured)
    row["planned_peak_mb"] = round(plan.peak(cfg.batch_size) / 2**20, 1)
    if "measured_peak_mb" in row:
        row["plan_over_measured"] = round(row["planned_peak_mb"] / row["measured_peak_mb"], 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--processes", type=int, default=torch.cuda.device_count() if torch.cuda.is_available() else 2)
    p.add_argument("--preset", default="baby-gpt")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated, of {', '.join(MODES)}")
    args = p.parse_args()
    result = common.new_result(processes=args.processes, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        result["runs"] = [one(args.data, m, args, Path(tmp) / m) for m in args.modes.split(",")]
    common.emit(result)


if __name__ == "__main__":
    main()
