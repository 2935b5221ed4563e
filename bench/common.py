"""What every benchmark shares: where and when a result was measured, how it is written, and
the timing and peak measurements more than one benchmark makes.

A result record starts with `new_result()`: the commit the code came from, the machine and
the date, so that a JSON found later says what it measured; `emit` prints it and refuses
a record without them. A figure from elsewhere (another machine, a published number) goes
in through `quoted`, with its source, and is never a term of a ratio this run reports as
measured. A model FLOPs utilisation divides by the matrix-product peak of the dtype the
run computed in, measured here in the same run (`matmul_peak_gflops`), never by a figure
from a datasheet or another precision.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from gpt.device import cpuinfo, resolve_dtype
from plumbing.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
PROVENANCE = ("commit", "date", "machine")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# -- the machine -----------------------------------------------------------------------------
def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def last_level_cache_mb(caches: Path = CPU_CACHES) -> float | None:
    """The size of the first core's largest cache level in MB, as Linux reports it (None
    elsewhere): whether a model's weights fit in it decides the bandwidth decoding gets."""
    sizes = {}
    for index in caches.glob("index*"):
        try:
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 / 1024, "M": 1, "G": 1024}.get(size[-1:].upper())
        if scale is not None and size[:-1].isdigit():
            sizes[level] = max(sizes.get(level, 0), int(size[:-1]) * scale)
    return sizes[max(sizes)] if sizes else None


def describe() -> dict:
    """The CPU model (or the GPU in use), cores, the last-level cache, Python, torch, and the
    load average when it is called (a busy machine gives slow numbers: call it at the start)."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "last_level_cache_mb": last_level_cache_mb(),
            "python": sys.version.split()[0], "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_before": round(os.getloadavg()[0], 2)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# -- the result record -----------------------------------------------------------------------
def git_commit(folder: Path = ROOT) -> str:
    """HEAD's commit, with "-dirty" when the work tree differs from it (untracked files that
    git does not ignore count: new code changes what runs as much as edited code does), or
    "unknown" outside a git checkout (an unpacked copy, a machine without git)."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        changes = subprocess.run(["git", "-C", str(folder), "status", "--porcelain"], capture_output=True, text=True,
                                 check=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if changes else head


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_result(**machine: object) -> dict:
    """A result record: the commit, the date (UTC) and the machine (describe() plus what the
    benchmark adds about it, e.g. its measured peaks), to which the benchmark adds its figures.
    Make it at the start of the run, so the load average is the one the run began with."""
    return {"commit": git_commit(), "date": utc_now(), "machine": {**describe(), **machine}}


def quoted(value: object, source: str) -> dict:
    """A figure this run did not measure (another machine, another day, a published number),
    kept apart from the measured ones with where it comes from."""
    return {"quoted": {"value": value, "source": source}}


def check_record(result: dict) -> None:
    missing = [key for key in PROVENANCE if key not in result]
    if missing:  # a figure that cannot say where it was measured is not worth keeping
        raise ValueError(f"a benchmark result without {', '.join(missing)} (start it with bench.common.new_result)")


def emit(result: dict, indent: int | None = 1, file=None) -> None:
    """Print a result record as JSON (one line with indent=None)."""
    check_record(result)
    print(json.dumps(result, indent=indent), file=file or sys.stdout, flush=True)


def write_json(path: Path, result: dict) -> None:
    """Write a result record as a JSON file, whole or not at all."""
    check_record(result)
    atomic_write_text(Path(path), json.dumps(result, indent=1) + "\n")


def child_env() -> dict[str, str]:
    """The environment of a benchmark's child `python`: this checkout first on its path,
    then the caller's path (packages put on PYTHONPATH must stay importable there)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


# -- training runs ---------------------------------------------------------------------------
def read_metrics(run: Path) -> list[dict]:
    """The records of a run folder's metrics.jsonl, in order."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def steady(values: list) -> list:
    """Values logged after the first fifth of a run, which is warm-up (and compilation)."""
    return values[len(values) // 5 :] or values


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def training_dtype(options: dict, device: str | torch.device) -> torch.dtype:
    """The precision gpt-train computes in for these options on this device: the trainer's
    own rule (auto: bf16 on a CPU with native bf16 or a recent GPU), asked, not restated."""
    return resolve_dtype(options.get("dtype") or "auto", torch.device(device), training=True)


# -- timing and peaks ------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn, device: torch.device, repeats: int) -> float:
    """Mean seconds per call of fn over `repeats` calls after one warm-up call, synchronised
    on the device (a GPU returns before its work is done)."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def best_seconds(fn, repeats: int, inner: int) -> float:
    """The fastest of `repeats` means of `inner` calls (CPU work only): on a shared machine the
    best is the figure least moved by others' work."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", n: int | None = None,
                       seconds: float = 3.0) -> float:
    """GFLOP/s of square n x n matrix products in `dtype` on `device` (on a CPU, all torch
    threads), over about `seconds`: the denominator of the utilisation of a run computing
    in that dtype. bf16 products run at about twice fp32's rate where the hardware has them,
    so a bf16 run divided by the fp32 peak reads as up to twice its real utilisation."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)  # large enough to be compute-bound on each
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    first = seconds_per_call(lambda: a @ b, device, 3)  # warms up and sizes the timed loop
    repeats = max(3, int(seconds / max(first, 1e-9)))
    return 2 * n**3 / seconds_per_call(lambda: a @ b, device, repeats) / 1e9


def mfu(tokens_per_s: float, flops_per_token: float, peak_gflops: float) -> float:
    """Model FLOPs utilisation: the model's FLOPs per second over the measured peak."""
    return round(tokens_per_s * flops_per_token / (peak_gflops * 1e9), 3)
