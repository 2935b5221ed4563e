"""What a run prints while it trains: a progress bar on a terminal, plain periodic lines
anywhere else (a log file, a pipe), and evaluation lines. Output is a convenience, never a
reason to lose a run: once the reader has gone away (`gpt-train | head`), printing stops
and training goes on."""
from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm

from plumbing.command import silence_stdout

PLAIN_EVERY_S = 30.0  # without a terminal, a progress line at most this often


class Progress:
    def __init__(self, show: bool, step: int, max_iters: int | None, max_time: float | None,
                 log: Callable[[str], None] = print):
        """`show`: progress at all (off for --quiet and on ranks other than the first);
        evaluation lines are printed either way."""
        self.log, self.max_iters, self.max_time = log, max_iters, max_time
        self.show = show
        self.bar = None
        if show and sys.stderr.isatty():
            # a step count the time budget may end first would show a false time left; with a
            # time budget the bar counts steps and its text says the seconds left
            total = max_iters if max_iters and not max_time else None
            self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
        self.last_plain = time.perf_counter()

    def step(self, step: int, elapsed: float, stats: dict | None) -> None:
        """After each step; `stats` (loss, lr, tokens/s) on logged steps."""
        if not self.show:
            return
        if self.bar is not None:
            self.bar.update(1)
            if stats is not None:
                left = f", {max(self.max_time - elapsed, 0):.0f}s left" if self.max_time else ""
                self.bar.set_postfix_str(f"loss {stats['train_loss']:.4f}, lr {stats['lr']:.2e}, "
                                         f"{stats['tokens_per_s']:,.0f} tok/s{left}")
        elif stats is not None and time.perf_counter() - self.last_plain >= PLAIN_EVERY_S:
            self.last_plain = time.perf_counter()
            of = f"/{self.max_iters}" if self.max_iters else ""
            budget = f" of {self.max_time:.0f}" if self.max_time else ""
            self.say(f"step {step}{of}: loss {stats['train_loss']:.4f}, lr {stats['lr']:.2e}, "
                     f"{stats['tokens_per_s']:,.0f} tok/s, {elapsed:.0f}s{budget}")

    def say(self, line: str) -> None:
        """A line that stays (an evaluation, a note), printed above the bar."""
        if self.bar is not None:
            self.bar.clear()
        self.log(line)
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            try:
                self.bar.close()
            except OSError:
                pass


def tolerant(log: Callable[[str], None]) -> Callable[[str], None]:
    """`log`, made harmless: once the reader of standard output has gone away, lines go
    nowhere (and Python's own flush at exit has nothing left to fail on)."""

    def say(line: str) -> None:
        try:
            log(line)
        except BrokenPipeError:
            silence_stdout()
        except (OSError, ValueError):
            pass  # a full disk behind a redirect, a closed stream: the run matters more

    return say
