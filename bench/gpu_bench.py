"""The GPU benchmark, printed as JSON: training, sampling, and the physical floors.

    python -m bench.gpu_bench [--corpus tinyshakespeare.txt] [--train-steps 5000] [--target 1.48]

machine: the GPU, its matrix-product peak in the precision training computes in (bf16 on a
recent GPU), its memory bandwidth and the cost of one tiny kernel launch, all measured in
this run. training: the baby-gpt preset with torch.compile: tokens/s, MFU against that
measured peak, best val loss, and the time to reach --target. sampling: `gpt-sample` end to
end in fresh processes (1,000 tokens of one sample, start-up excluded, time to first token),
and the library warm (1 and 64 samples). floor: one token of one sample cannot beat the
weight bytes over the bandwidth, and the plain (ungraphed) decode step cannot beat its
kernel launches times the launch cost.

The well-known reference trainer's figures on an H100 (5,000 steps in 189 s wall, best val
1.4662 at step 1,750; its sample.py about 109 tokens/s) are quoted under `quoted`, with
their source: they were measured in another session, so nothing here is divided by them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import common
from data_prep.prepare import PrepareOptions, prepare
from gpt.kv_cache import KVCache
from gpt.model import count_parameters, flops_per_token
from gpt.sample import Generator, SamplingOptions
from gpt.train import train

DEFAULT_CORPUS = common.ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
REFERENCE_ON_H100 = common.quoted({"train_wall_s_5000_steps": 189, "best_val": 1.4662, "best_val_step": 1750,
                            "sample_tokens_per_s": 109},
                           "karpathy/nanoGPT's train.py (Shakespeare character config, 5,000 steps) and sample.py "
                           "on one NVIDIA H100 with torch 2.11 and CUDA 13, measured by an earlier session of this "
                           "project on a lent machine (README, GPUs), written into bench/gpu_bench.py on 2026-11-25")
SMOKE_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 4, "eval_windows": 16}


def training_options(data: Path, run: Path, device: str, steps: int, smoke: bool, compile: bool) -> dict:
    return {"data": str(data), "out": str(run), "device": device, "max_iters": steps,
            "compile": compile and device.startswith("cuda"), "progress": False, **(SMOKE_MODEL if smoke else {})}


def machine_figures(device: torch.device, peak_dtype: torch.dtype) -> dict:
    """The matrix-product peak in `peak_dtype` (the training's precision), memory bandwidth and
    the launch cost of a tiny kernel."""
    peak = common.matmul_peak_gflops(peak_dtype, device, seconds=1.0) / 1e3
    big = torch.empty(256 * 2**20 // 4, device=device)  # 256 MB
    copy_s = common.seconds_per_call(lambda: big.clone(), device, 10)
    bandwidth = 2 * big.numel() * 4 / copy_s / 1e9  # read and write
    tiny = torch.zeros(1, device=device)
    launch_us = common.seconds_per_call(lambda: tiny.add_(1), device, 2000) * 1e6
    return {"matmul_peak_tflops": round(peak, 4), "matmul_dtype": common.dtype_name(peak_dtype),
            "memory_bandwidth_gb_s": round(bandwidth, 1), "tiny_launch_us": round(launch_us, 2)}


def training(options: dict, target: float, peak_tflops: float, dtype: torch.dtype) -> dict:
    t0 = time.perf_counter()
    result = train("baby-gpt", options, log=lambda s: None)
    wall = time.perf_counter() - t0
    if result.stopped_by not in ("max_iters", "max_time"):
        raise SystemExit(f"gpu_bench: training was stopped ({result.stopped_by}) before its end")
    records = common.read_metrics(Path(options["out"]))
    evals = [r for r in records if "val_loss" in r]
    rates = common.steady([r["tokens_per_s"] for r in records if "tokens_per_s" in r])
    tokens_per_s = sum(rates) / len(rates)
    model = result.model
    fpt = flops_per_token(model.config, count_parameters(model))
    best = min(evals, key=lambda r: r["val_loss"])
    reached = next((r for r in evals if r["val_loss"] <= target), None)
    return {"preset": "baby-gpt", "dtype": common.dtype_name(dtype), "steps": result.step, "wall_s": round(wall, 1),
            "train_s": round(records[-1]["elapsed"], 1), "tokens_per_s": round(tokens_per_s),
            "mfu_vs_measured_peak": common.mfu(tokens_per_s, fpt, peak_tflops * 1e3),
            "best_val": round(best["val_loss"], 4), "best_val_step": best["step"],
            "best_val_elapsed_s": round(best["elapsed"], 1), "final_val": round(result.val_loss, 4),
            "target_val": target, "time_to_target_s": round(reached["elapsed"], 1) if reached else None}


def cli_sample(run: Path, device: str, tokens: int, program: tuple[str, ...] = ("-m", "gpt.sample")) -> dict:
    """`gpt-sample` in a fresh process: the first byte after the prompt is the first token;
    tokens/s is over the rest, up to the last byte written (start-up, checkpoint loading and
    the first token excluded, and so is the process's exit after its output, which on a GPU
    takes a few tenths of a second: reported apart)."""
    cmd = [sys.executable, *program, "--ckpt", str(run), "--max-new-tokens", str(tokens), "--ignore-eot",
           "--no-echo", "--device", device, "--seed", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=common.child_env())
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
        common.sync(gen.device)
        t0 = time.perf_counter()
        first = None
        group = gen.sync_every if samples > 1 else gen.stream_every
        for i, _ in enumerate(gen.token_steps([gen.tokenizer.eot_id], options, samples, group)):
            if i == 0:
                first = time.perf_counter() - t0
        common.sync(gen.device)
        seconds = time.perf_counter() - t0
        results[label] = {"tokens_per_s": round(tokens * samples / seconds, 1),
                          "time_to_first_token_ms": round(1000 * first, 2)}
    return {"samples": samples, "tokens_per_sample": tokens, **results}


def activities(device: torch.device) -> list:
    cuda = [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
    return [torch.profiler.ProfilerActivity.CPU, *cuda]


def floor(gen: Generator, machine: dict) -> dict:
    """Weight bytes / bandwidth, and kernel launches of one plain decode step x launch cost."""
    model = gen.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cache = KVCache.for_model(model, 1, gen.device, gen.dtype)
    with torch.inference_mode():
        model(torch.zeros(1, 8, dtype=torch.long, device=gen.device), cache=cache)
        with torch.profiler.profile(activities=activities(gen.device)) as prof:
            model(torch.zeros(1, 1, dtype=torch.long, device=gen.device), cache=cache)
            common.sync(gen.device)
    launch_calls = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
    launches = sum(e.count for e in prof.key_averages() if e.key in launch_calls)
    return {"weight_bytes": weight_bytes,
            "weights_over_bandwidth_us": round(weight_bytes / (machine["memory_bandwidth_gb_s"] * 1e9) * 1e6, 2),
            "plain_step_kernel_launches": launches,
            "launches_times_launch_cost_us": round(launches * machine["tiny_launch_us"], 1)}


def profile(gen: Generator, tokens: int) -> dict:
    """Host (CPU) time against device time per token, warm, one sample streamed."""
    options = SamplingOptions(max_new_tokens=tokens, stop_at_eot=False, seed=0)

    def run() -> list:
        return list(gen.token_steps([gen.tokenizer.eot_id], options, 1, gen.stream_every))

    run()
    common.sync(gen.device)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities(gen.device)) as prof:
        run()
        common.sync(gen.device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events)
    kernels = sum(e.count for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    return {"tokens": tokens, "wall_us_per_token_profiled": round(wall / tokens * 1e6, 1),
            "device_us_per_token": round(device_us / tokens, 1), "device_kernels_per_token": round(kernels / tokens, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--device", default="cuda")
    p.add_argument("--train-steps", type=int, default=5000)
    p.add_argument("--target", type=float, default=1.48, help="val loss whose time to reach is reported")
    p.add_argument("--sample-tokens", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-train-compile", action="store_true",
                   help="train eagerly (a quick model for the sampling figures)")
    p.add_argument("--compiled-sampling", action="store_true",
                   help="also measure one sample with the decode step compiled (--compile)")
    p.add_argument("--run", type=Path,
                   help="sample from this trained run instead of training one (no training figures)")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny model instead of baby-gpt: checks the script itself (e.g. on a CPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA GPU here (try --device cpu with small --train-steps to check the script)")
    report = common.new_result()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        run = args.run or tmp / "run"
        options = training_options(tmp / "data", run, args.device, args.train_steps, args.smoke,
                                   not args.no_train_compile)
        # the peak of the precision training computes in, so its MFU divides by what its products can reach
        dtype = common.training_dtype(options, device)
        report["machine"] |= machine_figures(device, dtype)
        report["reference_trainer_h100"] = REFERENCE_ON_H100
        if args.run is None:
            prepare([args.corpus], tmp / "data", PrepareOptions(progress=False))
            report["training"] = training(options, args.target, report["machine"]["matmul_peak_tflops"], dtype)
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
        report["sampling_dtype"] = common.dtype_name(gen.dtype)
    common.emit(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
