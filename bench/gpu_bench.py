"""The GPU benchmark, printed as JSON: training, sampling, and the physical floors.

    python bench/gpu_bench.py [--corpus tinyshakespeare.txt] [--train-steps 5000] [--target 1.48]

machine: the GPU, its bf16 matrix-product peak, its memory bandwidth and the cost of one
tiny kernel launch, all measured in this run. training: the baby-gpt preset with
torch.compile: tokens/s, MFU against the measured bf16 peak, best val loss, and the time to
reach --target. sampling: `gpt-sample` end to end in fresh processes (1,000 tokens of one
sample, start-up excluded, time to first token), and the library warm (1 and 64 samples).
floor: one token of one sample cannot beat the weight bytes over the bandwidth, and the
plain (ungraphed) decode step cannot beat its kernel launches times the launch cost.

Figures from the same H100 for the well-known reference trainer (in the README): 5,000
steps in 189 s wall, best val 1.4662 at step 1,750; its sample.py about 109 tokens/s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too

from data_prep.prepare import PrepareOptions, prepare  # noqa: E402
from gpt.kv_cache import KVCache  # noqa: E402
from gpt.model import count_parameters, flops_per_token  # noqa: E402
from gpt.sample import Generator, SamplingOptions  # noqa: E402
from gpt.train import train  # noqa: E402
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
REFERENCE = {"train_wall_s_5000_steps": 189, "best_val": 1.4662, "best_val_step": 1750, "sample_tokens_per_s": 109}


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call of fn, after a warm-up, synchronised on the device."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine_figures(device: torch.device) -> dict:
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    peak = 2 * n**3 / timed(lambda: a @ b, device, 10) / 1e12
    big = torch.empty(256 * 2**20 // 4, device=device)  # 256 MB
    copy_s = timed(lambda: big.clone(), device, 10)
    bandwidth = 2 * big.numel() * 4 / copy_s / 1e9  # read and write
    tiny = torch.zeros(1, device=device)
    launch_us = timed(lambda: tiny.add_(1), device, 2000) * 1e6
    return {**describe(), "matmul_peak_tflops": round(peak, 4), "matmul_dtype": str(dtype).replace("torch.", ""),
            "memory_bandwidth_gb_s": round(bandwidth, 1), "tiny_launch_us": round(launch_us, 2)}


SMOKE_MODEL = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, eval_windows=16)


def training(data: Path, run: Path, device: str, steps: int, target: float, peak_tflops: float, smoke: bool,
             compile: bool) -> dict:
    t0 = time.perf_counter()
    options = {"data": str(data), "out": str(run), "device": device, "max_iters": steps,
               "compile": compile and device.startswith("cuda"), "progress": False, **(SMOKE_MODEL if smoke else {})}
    result = train("baby-gpt", options, log=lambda s: None)
    wall = time.perf_counter() - t0
    if result.stopped_by not in ("max_iters", "max_time"):
        raise SystemExit(f"gpu_bench: training was stopped ({result.stopped_by}) before its end")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    steady = rates[len(rates) // 5 :] or rates  # the first fifth: warm-up and compilation
    tokens_per_s = sum(steady) / len(steady)
    model = result.model
    fpt = flops_per_token(model.config, count_parameters(model))
    best = min(evals, key=lambda r: r["val_loss"])
    reached = next((r for r in evals if r["val_loss"] <= target), None)
    return {"preset": "baby-gpt", "steps": result.step, "wall_s": round(wall, 1), "train_s": round(records[-1]["elapsed"], 1),
            "tokens_per_s": round(tokens_per_s), "mfu_vs_measured_peak": round(tokens_per_s * fpt / (peak_tflops * 1e12), 3),
            "best_val": round(best["val_loss"], 4), "best_val_step": best["step"], "best_val_elapsed_s": round(best["elapsed"], 1),
            "final_val": round(result.val_loss, 4), "target_val": target,
            "time_to_target_s": round(reached["elapsed"], 1) if reached else None}


def cli_sample(run: Path, device: str, tokens: int, program: tuple[str, ...] = ("-m", "gpt.sample")) -> dict:
    """`gpt-sample` in a fresh process: the first byte after the prompt is the first token;
    tokens/s is over the rest, up to the last byte written (start-up, checkpoint loading and
    the first token excluded, and so is the process's exit after its output, which on a GPU
    takes a few tenths of a second: reported apart)."""
    cmd = [sys.executable, *program, "--ckpt", str(run), "--max-new-tokens", str(tokens), "--ignore-eot",
           "--no-echo", "--device", device, "--seed", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    output, t_first, t_last = b"", None, None
    while chunk := os.read(proc.stdout.fileno(), 1 << 16):
        t_last = time.perf_counter()
        t_first = t_first or t_last
        output += chunk
    t_end = time.perf_counter()
    proc.wait()
    if proc.returncode != 0 or not output:
        raise SystemExit(f"gpt-sample failed: {proc.stderr.read().decode()[-2000:]}")
    return {"tokens": tokens, "process_to_first_token_s": round(t_first - start, 2),
            "tokens_per_s_after_first": round((tokens - 1) / (t_last - t_first), 1),
            "exit_after_output_s": round(t_end - t_last, 2), "characters": len(output.decode("utf-8", "replace"))}


def library_sample(gen: Generator, tokens: int, samples: int) -> dict:
    options = SamplingOptions(max_new_tokens=tokens, stop_at_eot=False, seed=0)
    results = {}
    for label in ("cold", "warm"):  # cold: the first call (graph capture, allocator); warm: the same again
        sync(gen.device)
        t0 = time.perf_counter()
        first = None
        for i, _ in enumerate(gen.token_steps([gen.tokenizer.eot_id], options, samples, gen.sync_every if samples > 1 else gen.stream_every)):
            if i == 0:
                first = time.perf_counter() - t0
        sync(gen.device)
        seconds = time.perf_counter() - t0
        results[label] = {"tokens_per_s": round(tokens * samples / seconds, 1), "time_to_first_token_ms": round(1000 * first, 2)}
    return {"samples": samples, "tokens_per_sample": tokens, **results}


def floor(gen: Generator, machine: dict) -> dict:
    """Weight bytes / bandwidth, and kernel launches of one plain decode step x launch cost."""
    model = gen.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cache = KVCache.for_model(model, 1, gen.device, gen.dtype)
    with torch.inference_mode():
        model(torch.zeros(1, 8, dtype=torch.long, device=gen.device), cache=cache)
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gen.device.type == "cuda" else [])
        with torch.profiler.profile(activities=activities) as prof:
            model.decode(torch.zeros(1, dtype=torch.long, device=gen.device), cache)
            sync(gen.device)
    launches = sum(e.count for e in prof.key_averages() if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    return {"weight_bytes": weight_bytes,
            "weights_over_bandwidth_us": round(weight_bytes / (machine["memory_bandwidth_gb_s"] * 1e9) * 1e6, 2),
            "plain_step_kernel_launches": launches,
            "launches_times_launch_cost_us": round(launches * machine["tiny_launch_us"], 1)}


def profile(gen: Generator, tokens: int) -> dict:
    """Host (CPU) time against device time per token, warm, one sample streamed."""
    options = SamplingOptions(max_new_tokens=tokens, stop_at_eot=False, seed=0)
    run = lambda: list(gen.token_steps([gen.tokenizer.eot_id], options, 1, gen.stream_every))  # noqa: E731
    run()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gen.device.type == "cuda" else [])
    sync(gen.device)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        run()
        sync(gen.device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    kernels = sum(e.count for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    return {"tokens": tokens, "wall_us_per_token_profiled": round(wall / tokens * 1e6, 1),
            "device_us_per_token": round(device_us / tokens, 1), "device_kernels_per_token": round(kernels / tokens, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--device", default="cuda")
    p.add_argument("--train-steps", type=int, default=5000)
    p.add_argument("--target", type=float, default=1.48, help="val loss whose time to reach is reported")
    p.add_argument("--sample-tokens", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-train-compile", action="store_true", help="train eagerly (a quick model for the sampling figures)")
    p.add_argument("--compiled-sampling", action="store_true", help="also measure one sample with the decode step compiled (--compile)")
    p.add_argument("--run", type=Path, help="sample from this trained run instead of training one (no training figures)")
    p.add_argument("--smoke", action="store_true", help="a tiny model instead of baby-gpt: checks the script itself (e.g. on a CPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA GPU here (try --device cpu with small --train-steps to check the script)")
    report = {"machine": machine_figures(device), "reference_same_gpu": REFERENCE}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        run = args.run or tmp / "run"
        if args.run is None:
            prepare([args.corpus], tmp / "data", PrepareOptions(progress=False))
            report["training"] = training(tmp / "data", run, args.device, args.train_steps, args.target,
                                          report["machine"]["matmul_peak_tflops"], args.smoke, not args.no_train_compile)
        report["sampling_cli_fresh_process"] = cli_sample(run, args.device, args.sample_tokens)
        gen = Generator.load(run, args.device)
        report["sampling_library_1"] = library_sample(gen, args.sample_tokens, 1)
        report["sampling_library_batch"] = library_sample(gen, args.sample_tokens, args.batch)
        report["floor_one_sample"] = floor(gen, report["machine"])
        report["profile_one_sample"] = profile(gen, args.sample_tokens)
        if args.compiled_sampling:  # one sample only: each new shape compiles again
            fused = Generator.load(run, args.device, compile=True)
            report["sampling_library_1_compiled"] = library_sample(fused, args.sample_tokens, 1)
            report["profile_one_sample_compiled"] = profile(fused, args.sample_tokens)
        report["sampling_dtype"] = str(gen.dtype).replace("torch.", "")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
