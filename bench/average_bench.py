"""What the weight average (`--ema`) buys: held-out loss of the trained weights and of their
average, at every evaluation of the same training, printed as JSON.

    python -m bench.average_bench CORPUS [CORPUS ...] [--steps 2000] [--decay 0.99] [--preset cpu-small]

Each corpus is prepared, then trained twice from the same seed, with `--ema 0` and with
`--ema DECAY`. The average only watches the training (the tests check that the steps are the
same), so at each evaluation the two runs' val losses are the trained weights' and the
average's at the same step: a paired comparison, free of the seed's noise. The step budget
(not a time budget) keeps the two runs' steps equal on a busy machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import emit, new_result, read_metrics, steady
from data_prep.prepare import PrepareOptions, prepare
from gpt.train import train


def evaluations(rows: list[dict]) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


def tokens_per_s(rows: list[dict]) -> float:
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    return statistics.median(steady(rates))


def compare(corpus: Path, tmp: Path, args: argparse.Namespace) -> dict:
    data = tmp / corpus.name / "data"
    prepare([corpus], data, PrepareOptions(workers=1, progress=False))
    runs = {}
    for name, decay in (("trained", 0.0), ("average", args.decay)):
        out = tmp / corpus.name / name
        train(args.preset, {"data": str(data), "out": str(out), "device": "cpu", "max_iters": args.steps, "max_time": 0,
                            "eval_interval": args.eval_interval, "patience": 0, "ema": decay, "progress": False},
              log=lambda s: None)
        runs[name] = read_metrics(out)
    trained, average = evaluations(runs["trained"]), evaluations(runs["average"])
    curve = [(step, round(trained[step], 4), round(average[step], 4), round(1 - average[step] / trained[step], 4))
             for step in sorted(trained)]
    return {"corpus": str(corpus), "steps": args.steps,
            "final": {"trained": round(trained[args.steps], 4), "average": round(average[args.steps], 4),
                      "lower_by": round(1 - average[args.steps] / trained[args.steps], 4)},
            "best": {name: {"val_loss": round(min(e.values()), 4), "step": min(e, key=e.get)}
                     for name, e in (("trained", trained), ("average", average))},
            "curve_step_trained_average_lowerby": curve,
            "tokens_per_s": {name: round(tokens_per_s(rows)) for name, rows in runs.items()}}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.average_bench", description=__doc__.splitlines()[0])
    p.add_argument("corpora", type=Path, nargs="+")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--decay", type=float, default=0.99)
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--eval-interval", type=int, default=250)
    args = p.parse_args()
    missing = [str(c) for c in args.corpora if not c.exists()]
    if missing:
        sys.exit(f"average_bench: no such corpus: {', '.join(missing)}")
    result = new_result() | {"preset": args.preset, "decay": args.decay}
    with tempfile.TemporaryDirectory() as tmp:
        result["results"] = [compare(corpus, Path(tmp), args) for corpus in args.corpora]
    emit(result)


if __name__ == "__main__":
    main()
