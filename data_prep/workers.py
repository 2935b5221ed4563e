"""The worker processes both passes share, and the grouping of small jobs."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterable, Iterator


class Workers:
    """Worker processes shared by both passes (none for one worker: jobs run here)."""

    def __init__(self, n: int):
        self.n = n
        self.pool = ProcessPoolExecutor(max_workers=n) if n > 1 else None

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
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def run(self, fn: Callable, job):
        """fn(job) in one worker process (here when there are none)."""
        return fn(job) if self.pool is None else self.pool.submit(fn, job).result()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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
