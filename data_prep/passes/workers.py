"""The worker processes both passes (and the BPE's learning) share, and the grouping of
small jobs."""
from __future__ import annotations

import os
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from ..errors import DataError


class Workers:
    """Worker processes shared by both passes (none for one worker: jobs run here). The
    main process alone answers Ctrl-C and SIGTERM: it ends the workers as it unwinds."""

    def __init__(self, n: int):
        self.n = n
        self.pool = ProcessPoolExecutor(max_workers=n, initializer=start_worker) if n > 1 else None
        if self.pool is not None:
            try:
                self._start()
            except BaseException as e:
                self.__exit__(type(e), e, None)
                raise

    def _start(self) -> None:
        """Start the workers now, with Ctrl-C and SIGTERM held back while they are forked. A
        signal in the middle of a fork lands in the fork's own bookkeeping (the after-fork
        hooks, the pool's manager thread), where Python drops it or leaves the pool half
        made: the run then went on as if never interrupted, or failed with a traceback or
        hung. Held back, it is raised here, once the workers exist, and ends the run as
        anywhere else. The workers start with both held too (a fork keeps the mask), until
        `start_worker` has set their handlers. Only the main thread runs then: a signal
        held back by it reaches no other thread."""
        held = {signal.SIGINT, signal.SIGTERM}
        mask = getattr(signal, "pthread_sigmask", None)  # not on every system
        previous = mask(signal.SIG_BLOCK, held) if mask else None
        try:
            self.pool.submit(int)  # the first job forks every worker: with fork they all start at once
        finally:
            if mask:
                mask(signal.SIG_SETMASK, previous)  # a held-back signal is raised now

    def map(self, fn: Callable, jobs: Iterable) -> Iterator:
        """fn(job) for each job, results in job order, with few jobs in flight (archive
        members read ahead of the workers stay bounded in memory)."""
        if self.pool is None:
            yield from map(fn, jobs)
            return
        pending: deque[Future] = deque()
        for job in jobs:
            pending.append(self.pool.submit(fn, job))
            if len(pending) >= 2 * self.n:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())

    def run(self, fn: Callable, job):
        """fn(job) in one worker process (here when there are none)."""
        return fn(job) if self.pool is None else result(self.pool.submit(fn, job))

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, kind, *exc) -> None:
        if self.pool is None:
            return
        if kind is not None:  # a failure, Ctrl-C or SIGTERM: the workers' jobs are wasted, end them now
            # the pool's own processes (it has no public list), not every child: a caller's own are none of ours
            for worker in list((getattr(self.pool, "_processes", None) or {}).values()):
                if worker.is_alive():
                    worker.terminate()
        # One shutdown that waits, always: its manager thread must be joined before the
        # interpreter exits, whose own farewell to the pool otherwise writes to a pipe that
        # thread has closed (a traceback after the error line). A shutdown(wait=False)
        # first would forget the thread, so the second could not join it.
        self.pool.shutdown(wait=True, cancel_futures=True)


def result(future: Future):
    try:
        return future.result()
    except BrokenProcessPool:
        raise DataError("a worker process died (killed by a signal, or by the system for lack of memory?); "
                        "the output folder is as it was") from None


def start_worker() -> None:
    """Ctrl-C reaches every process of the terminal's group: a worker ignores it (the main
    process ends the workers), rather than print its own traceback. SIGTERM kills a worker
    at once (it inherited the main process's handler). On Linux a worker also dies with the
    main process, a kill -9 included, rather than work on for nobody."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # held back while the main process forked (Workers._start)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() == 1:  # the main process died before the request was made
        os._exit(1)


GROUP_BYTES = 1 << 20  # pass-1 units go to a worker in groups of about this much input
GROUP_CHARS = 1 << 21  # and pass-2 units in groups of about this many characters (a short tail)
UNIT_COST = 1 << 15  # a unit's fixed cost (files to open, write and remove), in bytes or characters


def grouped(items: Iterable, size: Callable, limit: int) -> Iterator[list]:
    """Consecutive items in groups of about `limit` by `size`: small units of work (an
    archive member, a small file) would otherwise cost more in process hand-offs than in work."""
    group, total = [], 0
    for item in items:
        group.append(item)
        total += size(item)
        if total >= limit:
            yield group
            group, total = [], 0
    if group:
        yield group
