"""Smaller models from a trained one, measured on a CPU, printed as JSON: a teacher, the
teacher in int8, a student distilled from it (gpt-train --teacher), the same student trained
from scratch for the same wall time, and the distilled student in int8.

    python -m bench.compress_bench CORPUS [CORPUS ...] [--teacher-time 180] [--student-time 90]

For each corpus: gpt-prepare, then the teacher (the cpu-small preset) for --teacher-time
seconds, then the two students (the same preset, 2 layers of 64 channels) for --student-time
seconds each, one after another. For each model: parameters, checkpoint size, val bits per
character (gpt-eval --split val, int8 with --quantize int8), and one sample's CPU tokens/s
(the library, 300 tokens after a warm-up, the median of 3). The distilled student's time
includes its teacher's forward passes: the two students are compared at equal wall time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, child_env, emit, new_result
from gpt.sample import Generator, SamplingOptions

STUDENT = ["--n-layer", "2", "--n-embd", "64", "--n-head", "4"]


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, env=child_env())
    if proc.returncode != 0:
        raise SystemExit(f"compress_bench: {' '.join(args[:2])} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def sample_speed(run_dir: Path, quantize: str | None, tokens: int = 300) -> float:
    gen = Generator.load(run_dir, "cpu", dtype="fp32", quantize=quantize)
    options = SamplingOptions(max_new_tokens=tokens, stop_at_eot=False, seed=0)
    ids = [gen.tokenizer.eot_id]
    list(gen.token_steps(ids, SamplingOptions(max_new_tokens=20, stop_at_eot=False, seed=0)))  # warm-up
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        list(gen.token_steps(ids, options))
        rates.append(tokens / (time.perf_counter() - t0))
    return round(statistics.median(rates), 1)


def measure(name: str, run_dir: Path, quantize: str | None = None) -> dict:
    evaluation = json.loads(run("gpt.evaluate.cli", "--ckpt", str(run_dir), "--split", "val", "--json", "--quiet",
                                "--device", "cpu", *(["--quantize", quantize] if quantize else [])))
    scores = evaluation["runs"][0]
    ckpt = run_dir / "best.pt"
    return {"model": name, "parameters": scores["parameters"], "checkpoint_mb": round(ckpt.stat().st_size / 1e6, 2),
            "val_bits_per_char": round(scores["bits_per_char"], 4),
            "cpu_tokens_per_s": sample_speed(run_dir, quantize), "quantize": quantize}


def one_corpus(corpus: Path, tmp: Path, teacher_time: float, student_time: float) -> dict:
    data = tmp / "data"
    run("data_prep.cli", str(corpus), "--out", str(data), "--force", "--quiet")
    common = ["--data", str(data), "--device", "cpu", "--quiet", "--preset", "cpu-small", "--patience", "0"]
    teacher, scratch, distilled = tmp / "teacher", tmp / "scratch", tmp / "distilled"
    run("gpt.train", *common, "--out", str(teacher), "--max-time", str(teacher_time))
    run("gpt.train", *common, *STUDENT, "--out", str(scratch), "--max-time", str(student_time))
    run("gpt.train", *common, *STUDENT, "--out", str(distilled), "--max-time", str(student_time),
        "--teacher", str(teacher))
    models = [measure("teacher", teacher), measure("teacher int8", teacher, "int8"),
              measure("student from scratch", scratch), measure("student distilled", distilled),
              measure("student distilled int8", distilled, "int8")]
    steps = {n: json.loads((r / "metrics.jsonl").read_text().splitlines()[-1])["step"]
             for n, r in (("scratch", scratch), ("distilled", distilled))}
    base = models[0]
    for m in models:
        m["bits_over_teacher"] = round(m["val_bits_per_char"] / base["val_bits_per_char"], 4)
        m["speed_over_teacher"] = round(m["cpu_tokens_per_s"] / base["cpu_tokens_per_s"], 2)
    return {"corpus": str(corpus), "teacher_s": teacher_time, "student_s": student_time, "student_steps": steps,
            "models": models}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.compress_bench", description=__doc__.splitlines()[0])
    p.add_argument("corpora", type=Path, nargs="+")
    p.add_argument("--teacher-time", type=float, default=180)
    p.add_argument("--student-time", type=float, default=90)
    args = p.parse_args()
    report = new_result() | {"student": " ".join(STUDENT), "corpora": []}
    for corpus in args.corpora:
        with tempfile.TemporaryDirectory(prefix="compress_bench-") as tmp:
            result = one_corpus(corpus, Path(tmp), args.teacher_time, args.student_time)
        print(json.dumps(result), file=sys.stderr, flush=True)
        report["corpora"].append(result)
    emit(report)


if __name__ == "__main__":
    main()
