"""gpt-train --plan against the memory a training step really takes, and what activation
checkpointing saves and costs, printed as JSON.

    python -m bench.plan_bench [--device cpu] [--steps 3]

Each configuration runs in a fresh process: the model, its optimizer and its weights'
average are built, two steps are taken (the optimizer's state then exists), and the next
`--steps` steps are measured. On a CPU the measured peak is the process's resident memory at
its highest during those steps (Linux's VmHWM, reset before them) less its resident memory
before the model was built; on a GPU it is torch.cuda.max_memory_allocated, and the plan is
gpt-train --plan's there: the step measured at 2 and 4 windows, extrapolated. The step time is
the median of the measured steps, with and without --activation-checkpointing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import ROOT, child_env, emit, new_result

CONFIGS = {  # name -> TrainConfig fields
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=24, ema=0.99, optimizer="muon"),
    "baby": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16, dropout=0.2, ema=0.99),
    "long-context": dict(n_layer=4, n_head=8, n_embd=256, block_size=1024, batch_size=8, dropout=0.1, pos="rope"),
    # not used to fit the plan's two measured coefficients: checks of it
    "wide": dict(n_layer=8, n_head=8, n_embd=512, block_size=512, batch_size=4, dropout=0.2, optimizer="muon"),
    "long-no-dropout": dict(n_layer=4, n_head=8, n_embd=256, block_size=1024, batch_size=8, dropout=0.0, ema=0.99),
}
VOCAB = 96


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def one(name: str, checkpointing: bool, device: str, steps: int, dtype_name: str = "fp32") -> dict:
    """Runs in the child process: the measured step of one configuration."""
    from gpt.config import TrainConfig
    from gpt.device import autocast, resolve_dtype
    from gpt.model import build_model
    from gpt.train.average import WeightAverage
    from gpt.train.optim import Optimizers
    from gpt.train.plan import measure_on_gpu, memory_plan

    dev = torch.device(device)
    cfg = TrainConfig(**CONFIGS[name], activation_checkpointing=checkpointing, dtype=dtype_name)
    dtype = resolve_dtype(cfg.dtype, dev, training=True)
    # on a GPU the plan measures the step at 2 and 4 windows, as gpt-train --plan does there
    measured = measure_on_gpu(cfg, VOCAB, dtype, dev) if dev.type == "cuda" else None
    plan = memory_plan(cfg, VOCAB, dtype, dev.type, measured=measured)
    before = rss_kb("VmRSS") * 1024
    before_gpu = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0  # what the process held already
    torch.manual_seed(0)
    model = build_model(cfg.model_config(VOCAB)).to(dev).train()
    model.checkpoint_blocks = checkpointing
    opt = Optimizers(model, cfg, dev, dtype)
    average = WeightAverage(list(model.parameters()), cfg.ema) if cfg.ema else None
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    x = torch.randint(0, VOCAB, (cfg.batch_size, cfg.block_size), device=dev)

    def step() -> float:
        t0 = time.perf_counter()
        with autocast(dev, dtype):
            _, loss = model(x, x)
        loss.backward()
        opt.step(scaler, cfg.grad_clip, model.parameters())
        if average is not None:
            average.update()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step(), step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = 0
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = before
    times = [step() for _ in range(steps)]
    peak = torch.cuda.max_memory_allocated() - before_gpu if dev.type == "cuda" else rss_kb("VmHWM") * 1024 - base
    return {"config": name, "activation_checkpointing": checkpointing, **CONFIGS[name], "dtype": str(dtype)[6:],
            "planned_peak_mb": round(plan.peak(cfg.batch_size) / 2**20, 1),
            "planned_activations_mb": round(plan.activations(cfg.batch_size) / 2**20, 1),
            "measured_peak_mb": round(peak / 2**20, 1),
            "plan_over_measured": round(plan.peak(cfg.batch_size) / peak, 3),
            "step_s": round(statistics.median(times), 4)}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.plan_bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--dtype", default="fp32", help="the products' precision: fp32, bf16 or auto (gpt-train's)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # NAME:0|1, in the child process
    args = p.parse_args()
    if args.one:
        name, on = args.one.split(":")
        print(json.dumps(one(name, on == "1", args.device, args.steps, args.dtype)))
        return
    report = new_result() | {"device": args.device, "dtype": args.dtype, "runs": []}
    for name in args.configs.split(","):
        for on in (False, True):
            cmd = [sys.executable, "-m", "bench.plan_bench", "--device", args.device, "--steps", str(args.steps),
                   "--dtype", args.dtype, "--one", f"{name}:{int(on)}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
            if proc.returncode != 0:
                raise SystemExit(f"plan_bench: {name} failed:\n{proc.stderr[-2000:]}")
            run = json.loads(proc.stdout.splitlines()[-1])
            print(json.dumps(run), file=sys.stderr, flush=True)
            report["runs"].append(run)
    for name in args.configs.split(","):
        plain, ckpt = (next(r for r in report["runs"] if r["config"] == name and r["activation_checkpointing"] == on)
                       for on in (False, True))
        report.setdefault("activation_checkpointing", {})[name] = {
            "peak_ratio": round(ckpt["measured_peak_mb"] / plain["measured_peak_mb"], 3),
            "step_time_ratio": round(ckpt["step_s"] / plain["step_s"], 3)}
    emit(report)


if __name__ == "__main__":
    main()
