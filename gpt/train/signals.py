"""Stopping a run cleanly: Ctrl-C and SIGTERM set a flag that the training loop checks at
step boundaries, so the checkpoint it then writes is of a whole step."""
from __future__ import annotations

import signal
import threading


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it at step boundaries."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        if hasattr(signal, "SIGTERM") and threading_main():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum == signum == signal.SIGINT:  # a second Ctrl-C: the user really wants out now
            raise KeyboardInterrupt
        # any other signal after the first is the same request, which must not cut the save
        # short: torchrun passes a Ctrl-C on to its workers and follows it at once with a
        # SIGTERM, and may send its workers SIGTERM twice (a service manager that wants a run
        # gone at once sends SIGKILL)
        if self.signum is None:
            self.signum = signum

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def threading_main() -> bool:
    return threading.current_thread() is threading.main_thread()
