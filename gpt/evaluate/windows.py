"""Sliding windows: which tokens each forward pass sees, and which of them it scores.

A stream of token ids u[0], u[1], ... (u[0] is the end-of-text token that precedes every
document in training) is scored position by position: the loss at position p is the
model's surprise at u[p] given the tokens before it. A model sees at most `context` tokens,
so a long stream is cut into windows. Each window holds `context` inputs and the
`context` next tokens they predict; it scores only its last `stride` targets (the first
window scores all of its own), and the tokens before those are context. So every position
is scored exactly once, and every target after the first window sees at least
`context - stride + 1` tokens. stride = context gives non-overlapping windows (cheap, short
context at each window's start); stride 1 gives every token the whole context (one forward
pass per token).

The stream arrives in pieces and memory stays bounded: only the tail that later windows
still need is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


@dataclass
class Windows:
    """A group of windows, in stream order. Row i holds inputs rows[i, :-1] and targets
    rows[i, 1:]; of its targets, the first `valid[i]` are real (the rest is padding, for a
    stream shorter than the context) and the last `scored[i]` of those are scored."""

    rows: np.ndarray  # (n, context + 1) int64
    valid: np.ndarray  # (n,) int64
    scored: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tokens(self) -> int:
        return int(self.scored.sum())

    @staticmethod
    def join(parts: list["Windows"]) -> "Windows":
        return Windows(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("rows", "valid", "scored")))

    def split(self, n: int) -> tuple["Windows", "Windows"]:
        """The first n windows and the rest."""
        head = Windows(self.rows[:n], self.valid[:n], self.scored[:n])
        return head, Windows(self.rows[n:], self.valid[n:], self.scored[n:])


class SlidingWindows:
    """Cuts a stream of token ids, given piece by piece, into windows (see the module)."""

    def __init__(self, context: int, stride: int, pad_id: int = 0):
        if not 1 <= stride <= context:
            raise ValueError(f"stride must be between 1 and the context ({context}), got {stride}")
        self.context, self.stride, self.pad_id = context, stride, pad_id
        self.buf = np.empty(0, np.int64)  # u[base : base + len(buf)]
        self.base = 0
        self.end = 0  # the last position scored so far (0: none yet; u[0] is never a target)

    def push(self, ids: np.ndarray) -> Windows:
        """Take the next piece of the stream; return the windows it completes."""
        self.buf = np.concatenate((self.buf, np.asarray(ids, dtype=np.int64)))
        C, S = self.context, self.stride
        last = self.base + len(self.buf) - 1  # the last position known
        ends = []
        if self.end == 0 and last >= C:
            ends.append(C)  # the first window scores all of its targets
        start = ends[0] if ends else self.end
        if start:
            ends += range(start + S, last + 1, S)
        if not ends:
            return self._empty()
        ends = np.asarray(ends, dtype=np.int64)
        scored = np.diff(ends, prepend=self.end)
        rows = sliding_window_view(self.buf, C + 1)[ends - C - self.base].copy()
        self.end = int(ends[-1])
        self._trim()
        return Windows(rows, np.full(len(ends), C, np.int64), scored)

    def finish(self) -> Windows:
        """The last window: the positions after the last full stride, or, for a stream
        shorter than the context, the whole stream in one (padded) window."""
        C = self.context
        last = self.base + len(self.buf) - 1
        if last <= self.end:
            return self._empty()
        if self.end == 0:  # the stream never filled a window: nothing was dropped from buf
            row = np.full(C + 1, self.pad_id, np.int64)
            row[: last + 1] = self.buf
            windows = Windows(row[None], np.array([last]), np.array([last]))
        else:
            row = self.buf[last - C - self.base : last + 1 - self.base]
            windows = Windows(row[None].copy(), np.array([C]), np.array([last - self.end]))
        self.end = last
        return windows

    def _trim(self) -> None:
        """Keep only what a later window can need: from position end + 1 - context on."""
        drop = self.end + 1 - self.context - self.base
        if drop > 0:
            self.buf = self.buf[drop:].copy()
            self.base += drop

    def _empty(self) -> Windows:
        return Windows(np.empty((0, self.context + 1), np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
