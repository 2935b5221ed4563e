"""Pictures of training runs: metrics.jsonl (runs.py) -> matplotlib figures (figure.py) ->
PNG or SVG. gpt-train keeps its run's picture up to date (live.py); `gpt-plot` (cli.py)
overlays several runs. matplotlib is optional: `pip install 'chargpt[plot]'`."""
from .figure import NoMatplotlib, draw_progress, draw_runs, save_figure
from .live import PICTURE_FILE, ProgressPicture
from .runs import PlotError, RunMetrics, read_run

__all__ = ["NoMatplotlib", "PICTURE_FILE", "PlotError", "ProgressPicture", "RunMetrics", "draw_progress", "draw_runs",
           "read_run", "save_figure"]
