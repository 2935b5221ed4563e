"""Smaller models from a trained one, measured on a CPU, printed as JSON: a teacher, the
teacher in int8, the teacher pruned to about half its parameters (gpt-prune) before and after
healing, a model of the pruned shape trained from scratch, a student distilled from the
teacher (gpt-train --teacher), the same student trained from scratch, and the healed and the
distilled models in int8.

    python -m bench.compress_bench CORPUS [CORPUS ...] [--teacher-time 180] [--student-time 90]
                                   [--figure PATH]

For each corpus: gpt-prepare, then one run after another:
- the teacher (the cpu-small preset) for --teacher-time seconds;
- the two students (the same preset, 2 layers of 64 channels) for --student-time seconds
  each. The distilled student's time includes its teacher's forward passes, so the two are
  compared at equal wall time;
- the teacher pruned (--heads 0.5 --mlp 0.5), then healed by gpt-train --init-from for
  --student-time seconds;
- a model of the pruned shape (--head-dim, --mlp-width) trained from scratch for the
  teacher's time plus the healing's: the same total compute as the pruned and healed model.
For each model: parameters, checkpoint size, val bits per character (gpt-eval --split val,
int8 with --quantize int8), and one sample's CPU tokens/s (the library, 300 tokens after a
warm-up, the median of 3). --figure draws bits/char against tokens/s, a panel per corpus.
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
PRUNE = ["--heads", "0.5", "--mlp", "0.5"]


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


def pruned_shape(run_dir: Path) -> list[str]:
    """The gpt-train options that build a model of a pruned run's shape from scratch."""
    cfg = json.loads((run_dir / "config.json").read_text())["model"]
    return [f"--{k.replace('_', '-')}={cfg[k]}" for k in ("n_layer", "n_head", "n_embd", "head_dim", "mlp_width")]


def one_corpus(corpus: Path, tmp: Path, teacher_time: float, student_time: float) -> dict:
    data = tmp / "data"
    run("data_prep.cli", str(corpus), "--out", str(data), "--force", "--quiet")
    common = ["--data", str(data), "--device", "cpu", "--quiet", "--preset", "cpu-small", "--patience", "0"]
    teacher, scratch, distilled = tmp / "teacher", tmp / "scratch", tmp / "distilled"
    pruned, healed, same_size = tmp / "pruned", tmp / "healed", tmp / "same-size"
    run("gpt.train", *common, "--out", str(teacher), "--max-time", str(teacher_time))
    run("gpt.train", *common, *STUDENT, "--out", str(scratch), "--max-time", str(student_time))
    run("gpt.train", *common, *STUDENT, "--out", str(distilled), "--max-time", str(student_time),
        "--teacher", str(teacher))
    t0 = time.perf_counter()
    run("gpt.prune", str(teacher), "--out", str(pruned), *PRUNE, "--device", "cpu")
    prune_s = time.perf_counter() - t0
    run("gpt.train", *common, "--init-from", str(pruned), "--out", str(healed), "--max-time", str(student_time))
    run("gpt.train", *common, *pruned_shape(pruned), "--out", str(same_size),
        "--max-time", str(teacher_time + student_time))
    models = [measure("teacher", teacher), measure("teacher int8", teacher, "int8"),
              measure("pruned (heads and MLP halved)", pruned), measure("pruned, healed", healed),
              measure("pruned, healed int8", healed, "int8"),
              measure("pruned shape from scratch, teacher + healing time", same_size),
              measure("student from scratch", scratch), measure("student distilled", distilled),
              measure("student distilled int8", distilled, "int8")]
    steps = {n: json.loads((r / "metrics.jsonl").read_text().splitlines()[-1])["step"]
             for n, r in (("scratch", scratch), ("distilled", distilled), ("teacher", teacher), ("healed", healed),
                          ("same_size", same_size))}
    base = models[0]
    for m in models:
        m["bits_over_teacher"] = round(m["val_bits_per_char"] / base["val_bits_per_char"], 4)
        m["speed_over_teacher"] = round(m["cpu_tokens_per_s"] / base["cpu_tokens_per_s"], 2)
    return {"corpus": str(corpus), "teacher_s": teacher_time, "student_s": student_time,
            "prune_s": round(prune_s, 1), "steps": steps, "models": models}


def draw(report: dict, path: Path) -> None:
    """bits/char against CPU tokens/s, a panel per corpus: down and to the right is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corpora = report["corpora"]
    fig, axes = plt.subplots(1, len(corpora), figsize=(6 * len(corpora), 4.5), squeeze=False)
    for ax, result in zip(axes[0], corpora):
        for i, m in enumerate(result["models"]):
            ax.scatter(m["cpu_tokens_per_s"], m["val_bits_per_char"], s=36, color=f"C{i}", label=m["model"],
                       marker="x" if m["quantize"] else "o")
        ax.set_title(Path(result["corpus"]).name, fontsize=10)
        ax.legend(fontsize=7)
        ax.set_xlabel("one sample, CPU tokens/s")
        ax.set_ylabel("val bits/char")
        ax.grid(alpha=0.3)
    fig.suptitle(f"compress_bench, {report['machine'].get('cpu', '')}, {report['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.compress_bench", description=__doc__.splitlines()[0])
    p.add_argument("corpora", type=Path, nargs="+")
    p.add_argument("--teacher-time", type=float, default=180)
    p.add_argument("--student-time", type=float, default=90)
    p.add_argument("--figure", type=Path, help="draw bits/char against tokens/s into this PNG")
    args = p.parse_args()
    report = new_result() | {"student": " ".join(STUDENT), "corpora": []}
    for corpus in args.corpora:
        with tempfile.TemporaryDirectory(prefix="compress_bench-") as tmp:
            result = one_corpus(corpus, Path(tmp), args.teacher_time, args.student_time)
        print(json.dumps(result), file=sys.stderr, flush=True)
        report["corpora"].append(result)
    emit(report)
    if args.figure:
        draw(report, args.figure)


if __name__ == "__main__":
    main()
