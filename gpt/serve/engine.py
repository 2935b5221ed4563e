"""Continuous batching: one thread owns the model and runs every active sequence as one batch.

The KV cache has `max_batch` rows; each is a slot for one sequence. At every step the engine
1. lets go of the sequences that ended or whose reader went away, freeing their slots;
2. gives the free slots to waiting sequences, in order of arrival;
3. fills windows into their slots (a new prompt, or a window that moved), `FILL_CHUNK`
   tokens per model call and at most `FILL_BUDGET` tokens per step, so a long prompt delays
   the others by about a step, not by its whole length;
4. decodes one token for every sequence whose window is in its cache, all as one batch: the
   model's fixed-shape step with a position per row (`GPT.forward(pos=...)`).

The decode step always runs all `max_batch` rows, free ones included (their results are
not read; a free or filling row writes a key where its next fill writes anyway). A matrix
product's rounding depends on its shape, not on the other rows' values, so a fixed shape
makes each sequence's numbers, and its tokens, the same whether it ran alone or among
others; a fill's chunks depend on its own length only. Each sequence draws its noise from
its own seeded generator (`Sequence.next_noise`). The price is that a lone request
computes max_batch rows (on a 2-core CPU a lone client of the baby model got half the
tokens/s at 16 rows that it got at one): `--max-batch` is the operator's choice between the two.
"""
from __future__ import annotations

import sys
import threading
from collections import deque
from typing import Iterable

import torch

from plumbing.errors import first_line

from ..kv_cache import KVCache
from ..sample.sampling import NOT_FINITE, sample_next
from .adapters import using
from .sequence import Sequence, State

FILL_CHUNK = 64  # tokens of a window per model call when filling a slot
FILL_BUDGET = 128  # tokens filled per step, at most (at least one chunk)
ATTEND_STEP = 64  # the decode step attends over a multiple of this many positions


class EngineFull(Exception):
    """More sequences are waiting than the engine holds: the caller should come back later."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new sequences."""


class Engine:
    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, max_batch: int = 16,
                 max_waiting: int = 256, on_step=None):
        """`on_step(active, waiting, new_tokens)`: called after each step (for metrics)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        cfg = model.config
        self.model, self.device = model, device
        self.block_size, self.vocab_size = cfg.block_size, cfg.vocab_size
        self.max_batch, self.max_waiting, self.on_step = max_batch, max_waiting, on_step
        # a model without a cache (the bigram) reads the last token only: its step needs none
        self.cache = KVCache.for_model(model, max_batch, device, dtype) if model.supports_kv_cache else None
        self.rows = [self.cache.row(b) for b in range(max_batch)] if self.cache is not None else []
        self.ids = torch.zeros(max_batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.slots: list[Sequence | None] = [None] * max_batch
        self.waiting: deque[Sequence] = deque()
        self.changed = threading.Condition()
        self.stopping = self.running = False
        self.thread: threading.Thread | None = None

    # -- the callers' side (any thread) ---------------------------------------------------------
    def start(self) -> "Engine":
        """Run the engine on a thread of its own (`run` runs it on the caller's)."""
        self.thread = threading.Thread(target=self.run, name="gpt-serve engine", daemon=True)
        self.thread.start()
        return self

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences, all or none: EngineFull when the queue cannot take them all."""
        with self.changed:
            if self.stopping:
                raise EngineStopped()
            if len(self.waiting) + len(sequences) > self.max_waiting:
                raise EngineFull()
            for seq in sequences:
                if seq.options.max_new_tokens == 0:
                    seq.sink(seq.end("", "length"))
                else:
                    self.waiting.append(seq)
            self.changed.notify()

    def cancel(self, sequences: Iterable[Sequence]) -> None:
        """The reader went away: the sequences leave at the next step, freeing their slots."""
        with self.changed:
            for seq in sequences:
                seq.cancelled = True
            self.changed.notify()

    def stop(self, timeout: float | None = None) -> None:
        """End the engine: every sequence still queued or running ends as cancelled (by the
        engine's loop as it returns, or here if it is not running)."""
        with self.changed:
            self.stopping = True
            self.changed.notify()
            if not self.running:
                self._end_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def load(self) -> tuple[int, int]:
        """(sequences in slots, sequences waiting)."""
        with self.changed:
            return sum(s is not None for s in self.slots), len(self.waiting)

    # -- the engine's thread --------------------------------------------------------------------
    def run(self) -> None:
        """Take steps until stopped. gpt-serve runs this on the main thread: torch's worker
        threads serve the thread that first used them best (on a 2-core CPU a decode step run
        from a second thread took 1.6x as long), and the web server's thread has little to do."""
        with self.changed:
            self.running = True
        try:
            self._loop()
        finally:
            with self.changed:
                self.running = False
                self._end_all()

    def _end_all(self) -> None:
        for seq in [*self.waiting, *(s for s in self.slots if s is not None)]:
            if seq.state is not State.ENDED:
                seq.sink(seq.end("", "cancelled"))
        self.waiting.clear()
        self.slots = [None] * self.max_batch

    def _loop(self) -> None:
        while True:
            with self.changed:
                while not self.stopping and not self.waiting and not any(self.slots):
                    self.changed.wait()
                if self.stopping:
                    return
                self._let_go()
                self._admit()
                active, waiting = sum(s is not None for s in self.slots), len(self.waiting)
            try:
                new_tokens = self.step()
            except Exception as e:  # noqa: BLE001 - a failed step ends its sequences, not the server
                new_tokens = 0
                print(f"gpt-serve: error: a decode step failed, ending its requests: {first_line(e)}", file=sys.stderr)
                self._fail_all(e)
            if self.on_step is not None:
                self.on_step(active, waiting, new_tokens)

    def _let_go(self) -> None:
        for b, seq in enumerate(self.slots):
            if seq is not None and (seq.cancelled or seq.state is State.ENDED):
                if seq.state is not State.ENDED:
                    seq.sink(seq.end("", "cancelled"))
                self.slots[b] = None
        if any(s.cancelled for s in self.waiting):
            for seq in [s for s in self.waiting if s.cancelled]:
                seq.sink(seq.end("", "cancelled"))
            self.waiting = deque(s for s in self.waiting if not s.cancelled)

    def _admit(self) -> None:
        for b in range(self.max_batch):
            if not self.waiting:
                return
            if self.slots[b] is None:
                seq = self.waiting.popleft()
                seq.start(b, self.vocab_size, self.device)
                self.slots[b] = seq

    def _fail_all(self, error: Exception) -> None:
        message = first_line(error)
        for b, seq in enumerate(self.slots):
            if seq is not None and seq.state is not State.ENDED:
                seq.sink(seq.end("", "error", message))
            self.slots[b] = None

    @torch.inference_mode()
    def step(self) -> int:
        """Fill what fits the budget, then decode one token for every sequence ready: the
        number of tokens generated."""
        made = 0
        budget = FILL_BUDGET
        for seq in sorted((s for s in self.slots if s is not None and s.state is State.FILLING),
                          key=lambda s: s.slot):
            while budget > 0 and seq.state is State.FILLING and not seq.cancelled:
                filled, done = self._fill_chunk(seq)
                budget -= filled
                made += done
        ready = [s for s in self.slots if s is not None and s.state is State.DECODING and not s.cancelled]
        if ready:
            made += self._decode(ready)
        return made

    def _fill_chunk(self, seq: Sequence) -> tuple[int, int]:
        """The next chunk of the sequence's window into its cache row; when the window is all
        in, its next token. (tokens filled, tokens generated)"""
        start, n = seq.window_tokens()
        if self.cache is None:  # the last token is all the model reads
            logits = self.model(self._tensor(seq.tokens[n - 1 :])[None], last_only=True)[0][:, -1]
            return 1, self._sample([seq], logits)
        low = start + seq.filled
        high = min(low + FILL_CHUNK, n)
        row = self.rows[seq.slot]
        row.length = seq.filled
        with using(seq.adapter):
            logits = self.model(self._tensor(seq.tokens[low:high])[None], cache=row, last_only=True)[0][:, -1]
        seq.filled = high - start
        return high - low, (self._sample([seq], logits) if high == n else 0)

    def _decode(self, ready: list[Sequence]) -> int:
        ids, pos = [0] * self.max_batch, [0] * self.max_batch
        for b, seq in enumerate(self.slots):
            if seq is None:
                continue
            if seq.state is State.DECODING:
                ids[b], pos[b] = seq.tokens[-1], len(seq.tokens) - 1 - seq.window.start
            else:  # filling: its next chunk overwrites what this step writes at its next position
                pos[b] = min(seq.filled, self.block_size - 1)
        self.ids.copy_(self._tensor(ids).view(-1, 1))
        adapters = [0 if s is None else s.adapter for s in self.slots]
        if self.cache is None:
            logits = self.model(self.ids)[0][:, -1]
        else:
            self.pos.copy_(self._tensor(pos))
            # attention reads the positions up to the furthest row's, in steps of ATTEND_STEP:
            # a masked position adds an exact zero to its row's sums, so a row's numbers do not
            # depend on how far the others are (the crowd test holds it to that)
            reach = min(self.block_size, -(-(max(pos) + 1) // ATTEND_STEP) * ATTEND_STEP)
            with using(self._tensor(adapters) if any(adapters) else None):
                logits = self.model(self.ids, cache=self.cache.prefix(reach), pos=self.pos)[0][:, -1]  # (max_batch, V)
        rows = self._tensor([s.slot for s in ready])
        return self._sample(ready, logits.index_select(0, rows))

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> int:
        """Each sequence's next token from its row of logits (V,), grouped by sampling options
        (each operation is row by row, so a group's rows do not meet)."""
        finite = torch.isfinite(logits).all(-1).tolist()
        tokens = [0] * len(seqs)
        groups: dict[tuple, list[int]] = {}
        for i, seq in enumerate(seqs):
            groups.setdefault(seq.sampling, []).append(i)
        for sampling, group in groups.items():
            noise = None if sampling[0] == 0 else torch.stack([seqs[i].next_noise() for i in group])
            picks = sample_next(logits[group], *sampling, noise).view(-1).tolist()
            for i, token in zip(group, picks):
                tokens[i] = token
        for seq, token, ok in zip(seqs, tokens, finite):
            seq.sink(seq.push(token) if ok else seq.end("", "error", NOT_FINITE))
        return len(seqs)

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)
