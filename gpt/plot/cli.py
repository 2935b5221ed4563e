"""`gpt-plot`: several training runs on one picture, to read a sweep at a glance."""
from __future__ import annotations

import sys
from pathlib import Path

from plumbing.command import Parser, command

from .figure import draw_runs, picture_format, save_figure, written_by_gpt_plot
from .runs import X_AXES, PlotError, read_run

EPILOG = """
Each run is drawn in its own colour in four panels: train loss, val loss (with each run's
last value in the legend), learning rate and tokens/s, against --x. The picture is PNG, or
SVG when --out ends in .svg. gpt-train keeps a picture of its own run, progress.png, in
its run folder.

examples:
  gpt-plot checkpoints/lr-*                         a learning-rate sweep, against steps
  gpt-plot checkpoints/a checkpoints/b --x time --out ab.svg
"""


def build_parser() -> Parser:
    p = Parser(prog="gpt-plot", description=__doc__, epilog=EPILOG)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or their metrics.jsonl files)")
    p.add_argument("--out", default="runs.png", metavar="FILE",
                   help="the picture to write, .png or .svg (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="replace an --out that gpt-plot did not write (a picture of its own is replaced anyway)")
    p.add_argument("--x", choices=tuple(X_AXES), default="step",
                   help="the x axis: steps, tokens seen or training time (default: %(default)s)")
    return p


def plot(args) -> None:
    if not args.out:  # Path("") is the current folder
        raise PlotError("--out is empty: name the picture file to write (a .png or .svg)")
    out = Path(args.out)
    picture_format(out)  # refuse a wrong suffix before reading anything
    if out.is_dir():
        raise PlotError(f"--out {out} is a folder; name a .png or .svg file")
    if not out.absolute().parent.is_dir():  # said before any run is read, naming the folder, not the file
        raise PlotError(f"--out {out}: the folder {out.absolute().parent} does not exist (or is not a folder)")
    if (out.exists() or out.is_symlink()) and not args.force and not written_by_gpt_plot(out):
        what = "a link" if out.is_symlink() else "a file gpt-plot did not write"
        raise PlotError(f"--out {out} is {what}; choose another --out, or --force to replace it")
    runs = [read_run(r) for r in args.runs]
    empty = [r.path for r in runs if not r.logged and not r.evals]
    if empty:  # a run's file before its first log line, or a file of something else
        raise PlotError(f"no gpt-train metrics records (JSON lines with a step) in {', '.join(map(str, empty))}: a run "
                        "that has not logged yet, or not a run's metrics.jsonl")
    save_figure(draw_runs(runs, args.x), out)
    print(f"wrote {out}: {len(runs)} run(s) against {args.x}")


main = command("gpt-plot", build_parser, plot, makes_files=True)


if __name__ == "__main__":
    sys.exit(main())
