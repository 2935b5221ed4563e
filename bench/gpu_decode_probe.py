"""Which attention kernels the recorded decode step should use, measured on a CUDA GPU.

    python -m bench.gpu_decode_probe RUN     # RUN: a trained run folder (e.g. baby-gpt)

For each choice of `gpt.sample.static_decode.STEP_ATTENTION` (torch's own, which picks
cuDNN on an H100/H200, or the memory-efficient kernel): `gpt-sample` in a fresh process
(1,000 tokens, as bench.gpu_bench times it), then the library in a fresh process, one sample
(cold: the process's first call; warm: the same again) and 64 samples, the gaps over 3 ms
between tokens read back, and the kernels of one eager decode step. Prints JSON lines, each
with the commit, machine and date it was measured on.
"""
from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend

from bench.common import ROOT, emit, new_result
from bench.gpu_bench import cli_sample
from gpt.sample import static_decode
from gpt.sample.decode_loop import DecodeLoop
from gpt.sample.generate import Generator
from gpt.sample.sampling import SamplingOptions

MODULE = ("-m", "bench.gpu_decode_probe")

CHOICES = {"default": None, "efficient": [SDPBackend.EFFICIENT_ATTENTION]}


def timed(gen: Generator, samples: int, group: int, tokens: int = 1000) -> dict:
    options = SamplingOptions(max_new_tokens=tokens, stop_at_eot=False, seed=0)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    stamps = [time.perf_counter() - t0 for _ in gen.token_steps([gen.tokenizer.eot_id], options, samples, group)]
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    # gaps over 3 ms between tokens: the stalls this probe looks for
    gaps = [(i, round(1000 * (b - a), 2)) for i, (a, b) in enumerate(itertools.pairwise(stamps), start=1)
            if b - a > 0.003]
    return {"first_ms": round(1000 * stamps[0], 2),
            "rate_after_first": round((tokens - 1) * samples / (total - stamps[0]), 1), "stalls_ms": gaps[:12]}


def step_kernels(gen: Generator) -> dict:
    """Device kernels of one decode step run eagerly (no graph), mean of 10 steps."""
    options = SamplingOptions(max_new_tokens=300, stop_at_eot=False, seed=0)
    with torch.inference_mode():
        loop = DecodeLoop(gen.model, gen.device, gen.dtype, [0], options, 1, static=True)
        loop.step.replay.use_graph = False
        steps = loop.tokens(1)
        for _ in range(20):
            next(steps)
        torch.cuda.synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(10):
                next(steps)
            torch.cuda.synchronize()
    rows = sorted(((e.key[:70], e.count / 10, round(e.self_device_time_total / 10, 2)) for e in prof.key_averages()
                   if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda r: -r[2])
    return {"count": sum(r[1] for r in rows), "us": round(sum(r[2] for r in rows), 1), "top": rows[:14]}


def library(run: str, choice: str) -> dict:
    static_decode.STEP_ATTENTION = CHOICES[choice]
    gen = Generator.load(run, "cuda")
    return {"choice": choice, "cold1": timed(gen, 1, 8), "warm1": timed(gen, 1, 8), "warm1_group32": timed(gen, 1, 32),
            "cold64": timed(gen, 64, 32), "warm64": timed(gen, 64, 32), "kernels": step_kernels(gen)}


def main() -> None:
    if sys.argv[1] == "--cli":  # gpt-sample with the choice made: python -m bench.gpu_decode_probe --cli CHOICE ARGS...
        static_decode.STEP_ATTENTION = CHOICES[sys.argv[2]]
        from gpt.sample.cli import main as sample_main
        sys.exit(sample_main(sys.argv[3:]))
    if sys.argv[1] == "--library":
        emit(new_result() | library(sys.argv[2], sys.argv[3]), indent=None)
        return
    run = sys.argv[1]
    for choice in CHOICES:
        for _ in range(2):
            measured = cli_sample(Path(run), "cuda", 1000, (*MODULE, "--cli", choice))
            emit(new_result() | {"cli": choice, **measured}, indent=None)
        # a fresh process per choice: its first call is the cold one measured
        subprocess.run([sys.executable, *MODULE, "--library", run, choice], cwd=ROOT, timeout=300, check=False)


if __name__ == "__main__":
    main()
