"""Pictures of runs, drawn with matplotlib: one run's progress, or several runs overlaid.

matplotlib is an optional dependency (`pip install 'chargpt[plot]'`), imported only when a
picture is drawn. Figures are made with `matplotlib.figure.Figure`, not pyplot: no global
figure registry to leak memory in a long run, no GUI backend, safe beside a training loop.
"""
from __future__ import annotations

import io
from pathlib import Path

from plumbing.atomic import atomic_write_bytes

from .runs import PlotError, RunMetrics

INSTALL_HINT = "pip install 'chargpt[plot]' (or pip install matplotlib)"
FORMATS = ("png", "svg")
X_LABELS = {"step": "step", "tokens": "tokens seen", "time": "training time (minutes)"}
DPI = 80


class NoMatplotlib(PlotError):
    """The optional plotting library is not installed."""


def new_figure(rows: int, cols: int):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise NoMatplotlib(f"drawing pictures needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows), dpi=DPI, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def scaled(x: str, values: list[float]) -> list[float]:
    return [v / 60 for v in values] if x == "time" else values


def loss_limits(ax, curves: list[tuple[list[float], list[float]]]) -> None:
    """Show the part of the loss curves that matters: their first few percent fall steeply
    from the loss of a random model, and would squash the rest into a flat line."""
    xs = [x for c in curves for x in c[0]]
    if len(xs) < 2:
        return
    start = min(xs) + 0.05 * (max(xs) - min(xs))
    later = [y for cx, cy in curves for x, y in zip(cx, cy) if x >= start]
    low = min(y for c in curves for y in c[1])
    if later and max(later) > low:
        ax.set_ylim(low - 0.03 * (max(later) - low), max(later) + 0.05 * (max(later) - low))


def draw_progress(run: RunMetrics):
    """One run: train and val loss against steps and against time, learning rate, tokens/s."""
    fig, axes = new_figure(2, 2)
    for ax, x in ((axes[0][0], "step"), (axes[0][1], "time")):
        curves = []
        for records, y, style in ((run.logged, "train_loss", dict(lw=1, alpha=0.7, label="train")),
                                  (run.evals, "val_loss", dict(marker="o", ms=3, lw=1.5, label="val"))):
            xs, ys = run.series(records, x, y)
            ax.plot(scaled(x, xs), ys, **shown(style, len(xs)))
            curves.append((scaled(x, xs), ys))
        loss_limits(ax, curves)
        ax.set(xlabel=X_LABELS[x], ylabel="loss (nats/token)")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    for ax, y, label in ((axes[1][0], "lr", "learning rate"), (axes[1][1], "tokens_per_s", "tokens/s")):
        xs, ys = run.series(run.logged, "step", y)
        ax.plot(xs, ys, **shown(dict(lw=1), len(xs)))
        ax.set(xlabel="step", ylabel=label)
        ax.grid(alpha=0.3)
    last = run.last_eval
    bpc = f" ({last['val_bpc']:.3f} bits/char)" if last and "val_bpc" in last else ""
    detail = f": val {last['val_loss']:.4f}{bpc} at step {last['step']}" if last else ""
    fig.suptitle(literal(f"{run.name}{detail}"))
    return fig


def shown(style: dict, points: int) -> dict:
    """`style` for a line of `points` points: a single point draws no line, so it gets a marker."""
    return {"marker": "o", "ms": 4, **style} if points == 1 else style


def literal(text: str) -> str:
    """Text matplotlib shows as it is: a `$` would start a formula (a run named `r$x$`)."""
    return text.replace("$", r"\$")


def draw_runs(runs: list[RunMetrics], x: str = "step"):
    """Several runs on one picture, each in its own colour: train loss, val loss, learning
    rate and tokens/s against steps, tokens seen or training time."""
    fig, axes = new_figure(2, 2)
    panels = ((axes[0][0], "logged", "train_loss", "train loss (nats/token)"),
              (axes[0][1], "evals", "val_loss", "val loss (nats/token)"),
              (axes[1][0], "logged", "lr", "learning rate"), (axes[1][1], "logged", "tokens_per_s", "tokens/s"))
    for ax, which, y, label in panels:
        curves = []
        for i, run in enumerate(runs):
            xs, ys = run.series(getattr(run, which), x, y)
            style = dict(marker="o", ms=3) if which == "evals" else {}
            last = run.last_eval
            name = literal(f"{run.name} ({last['val_loss']:.3f})" if which == "evals" and last else run.name)
            ax.plot(scaled(x, xs), ys, **shown(dict(color=f"C{i % 10}", lw=1.2, label=name, **style), len(xs)))
            curves.append((scaled(x, xs), ys))
        if y.endswith("loss"):
            loss_limits(ax, curves)
        ax.set(xlabel=X_LABELS[x], ylabel=label)
        ax.grid(alpha=0.3)
    axes[0][1].legend(loc="upper right", fontsize="small", title="run (last val loss)", title_fontsize="small")
    return fig


def picture_format(path: Path) -> str:
    if path.is_dir():
        raise PlotError(f"{path} is a folder: --out names the picture file to write (a .png or .svg)")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise PlotError(f"{path}: pictures are written as .png or .svg, not {path.suffix or 'a file without a suffix'}")
    return fmt


MARK = "chargpt gpt-plot"  # in every picture's metadata: what tells a picture gpt-plot may replace
MARK_FIELD = {"png": "Software", "svg": "Creator"}  # where each format keeps it, near the file's start
MARK_WITHIN = 1 << 16  # bytes: matplotlib writes a PNG's text chunks and an SVG's metadata first


def written_by_gpt_plot(path: Path) -> bool:
    """Whether `path` is a picture gpt-plot (or gpt-train's progress.png) wrote: a file, not
    a link, with the mark in its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(MARK_WITHIN)
    except OSError:
        return False
    return not path.is_symlink() and MARK.encode() in head


def save_figure(fig, path: Path) -> None:
    """Write the picture atomically (a reader never sees half a file), PNG or SVG by suffix,
    with the mark that lets gpt-plot replace it later."""
    buf = io.BytesIO()
    fmt = picture_format(path)
    fig.savefig(buf, format=fmt, dpi=DPI, metadata={MARK_FIELD[fmt]: MARK})
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
