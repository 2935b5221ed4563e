"""What --deterministic costs, and whether the default already reruns bitwise: the same run
(cpu-small, a step budget) trained in turns with and without torch's deterministic kernels,
in one process, and each turn's final weights compared with the first's.

    python -m bench.determinism_bench ../shared/corpora/tinyshakespeare.txt --steps 200 --turns 3
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import dtype_name, emit, new_result, training_dtype
from data_prep.options import PrepareOptions
from data_prep.prepare import prepare
from gpt.store.checkpoint import load_checkpoint
from gpt.train import train


def one_run(data: Path, out: Path, steps: int, dtype: str, deterministic: bool) -> tuple[float, dict]:
    options = {"data": str(data), "out": str(out), "device": "cpu", "dtype": dtype, "max_iters": steps,
               "eval_interval": steps, "progress": False, "deterministic": deterministic, "seed": 7}
    start = time.perf_counter()
    train("cpu-small", options, log=lambda s: None)
    seconds = time.perf_counter() - start
    state = load_checkpoint(out / "latest.pt")
    return seconds, {**state["model"], **state.get("trained_model", {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", help="a text file or folder to prepare")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--turns", type=int, default=3, help="runs of each kind, taking turns")
    p.add_argument("--dtype", default="auto", help="auto (the run's default on this CPU), fp32 or bf16")
    args = p.parse_args()
    result = new_result()
    dtype = dtype_name(training_dtype({"dtype": args.dtype}, "cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare([args.corpus], data, PrepareOptions(workers=1, progress=False))
        times = {False: [], True: []}
        first, equal = None, []
        for turn in range(args.turns):
            for deterministic in ((False, True) if turn % 2 == 0 else (True, False)):  # each side goes first in turn
                seconds, weights = one_run(data, Path(tmp) / f"run-{turn}-{deterministic}", args.steps, dtype,
                                           deterministic)
                times[deterministic].append(seconds)
                first = first or weights
                equal.append(all(torch.equal(first[k], weights[k]) for k in first))
    default, det = statistics.median(times[False]), statistics.median(times[True])
    result.update({"steps": args.steps, "dtype": dtype, "turns": args.turns,
                   "seconds": {"default": times[False], "deterministic": times[True]},
                   "deterministic_over_default_median": round(det / default, 4),
                   "every_run_bitwise_equal_to_the_first": all(equal)})
    emit(result)


if __name__ == "__main__":
    main()
