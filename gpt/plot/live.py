"""The picture gpt-train keeps in its run folder: `progress.png`, redrawn after each
evaluation and at the end of the run, from the run's own metrics.jsonl.

A picture is never a reason to lose a run: without matplotlib the run says once how to get
pictures and goes on; a picture that fails to draw or write is warned about once and the
run goes on.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

from ..store.layout import METRICS_FILE, PICTURE_FILE
from .figure import INSTALL_HINT, NoMatplotlib, draw_progress, save_figure
from .runs import read_run

# redraw no more often than this many times the last drawing's cost: pictures stay under
# about 5% of a run's time even when evaluations come every few steps
COST_FACTOR = 20


class ProgressPicture:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled  # enabled on the rank that writes (rank 0)
        self.warned = False
        self.next_at = 0.0  # perf_counter time before which a redraw is skipped
        self.drawn_from = None  # (size, mtime) of the metrics file last drawn

    def update(self, final: bool = False) -> None:
        """Redraw if the metrics changed since the last picture (and, unless `final`, if the
        last drawing's cost allows)."""
        if not self.enabled or (not final and time.perf_counter() < self.next_at):
            return
        metrics = self.run_dir / METRICS_FILE
        try:
            stat = metrics.stat()
        except OSError:
            return  # nothing logged yet
        if (stat.st_size, stat.st_mtime_ns) == self.drawn_from:
            return
        t0 = time.perf_counter()
        try:
            save_figure(draw_progress(read_run(self.run_dir)), self.run_dir / PICTURE_FILE)
        except NoMatplotlib:
            self.warn(f"matplotlib is not installed, so the run draws no {PICTURE_FILE}; "
                      f"to get pictures: {INSTALL_HINT}")
            self.enabled = False
            return
        except Exception as e:  # noqa: BLE001 (a picture must never stop training, whatever the failure)
            self.warn(f"could not draw {self.run_dir / PICTURE_FILE} ({type(e).__name__}: {e}); training goes on")
            return
        self.drawn_from = (stat.st_size, stat.st_mtime_ns)
        self.next_at = time.perf_counter() + COST_FACTOR * (time.perf_counter() - t0)

    def warn(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            warnings.warn(message, stacklevel=3)
