"""gpt-prepare's progress bars: tqdm's, shown on a terminal only (or never, under --quiet).

tqdm is imported when a bar is first shown, not with the command: its import looks up its
own version through importlib.metadata, 20-25 ms of a start that is serial (no worker runs
yet), which a run under --quiet, or with its output not a terminal, does without.
"""
from __future__ import annotations

import sys


class NoBar:
    """What a bar that is not shown does: nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, unit: str, desc: str, show: bool | None, **options):
    """A tqdm bar, or a NoBar: `show` True always shows one, None on a terminal only (tqdm's
    own rule, for its default stream), False never."""
    if show is False or (show is None and not (sys.stderr is not None and sys.stderr.isatty())):
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, leave=False, **options)
