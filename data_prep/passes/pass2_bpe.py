"""Pass 2 for a BPE: a unit's token counts are only known once it is encoded, so the pass
runs the other way round from the character one (`pass2_char.CharPass`):

- `count`: each worker reads a unit's code point file back as text (`segments`), encodes
  it in batches of documents with the library's parallel `encode_batch`, appends the ids to
  the unit's token files, one per split (`NNNNNNN.train.ids`, `.val.ids`, in the shards' id
  type), an end-of-text token after each segment; the code point file is freed as soon as
  the unit is encoded. The counts are the files' lengths.
- `writer`: with every unit's counts known, and so its place, each unit's token files are
  copied into the shards and removed.

The token files take the id type's bytes per token (2, for up to 65,536 tokens); a BPE of
a few thousand tokens covers several characters a token, so they take about as much as the
code point files they replace (1 to 4 bytes a character), which are freed as they grow.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import writing
from ..prepared.data_folder import SPLITS
from ..progress import progress_bar
from ..tokenize.bpe import BpeTokenizer
from ..tokenize.kinds import worker_tokenizer
from .codepoint_files import ScratchIndex
from .pass2_char import EncodeJob
from .segments import segment_pieces
from .workers import GROUP_CHARS, UNIT_COST, Workers, grouped

BATCH_CHARS = 1 << 20  # characters handed to one encode_batch call (the library's threads share them)
COPY_TOKENS = 1 << 22  # tokens copied into the shards at a time


def ids_path(scratch: ScratchIndex, split: str) -> Path:
    return scratch.path.with_name(f"{scratch.path.stem}.{split}.ids")


def encode_unit(scratch: ScratchIndex, val_tails: float | None, tok: BpeTokenizer) -> tuple[int, int]:
    """Encode one unit into its token files; returns its (train, val) token counts."""
    with TokenFiles(scratch, tok) as files, scratch.open() as f:
        for in_val, pieces in segment_pieces(scratch, val_tails, f):
            split = SPLITS[in_val]
            for piece in pieces:
                files.add(split, piece)
            files.add(split, None)
    scratch.path.unlink()  # done with it: frees the disk now, and in parallel, not at the end
    return files.counts["train"], files.counts["val"]


class TokenFiles:
    """A unit's token files, one per split, filled in batches: texts wait until about
    BATCH_CHARS characters are pending, then go to the tokenizer in one `encode_batch` call
    (which spreads them over its threads), and their ids are appended in the order given."""

    def __init__(self, scratch: ScratchIndex, tok: BpeTokenizer):
        self.tok, self.dtype = tok, tok.dtype.newbyteorder("<")
        self.eot = np.array([tok.eot_id], np.int32)
        self.paths = {s: ids_path(scratch, s) for s in SPLITS}
        self.counts = dict.fromkeys(SPLITS, 0)
        self.pending: list[tuple[str, str | None]] = []  # (split, text); None: an end-of-text token
        self.pending_chars = 0
        self.files = {}
        try:
            with writing(scratch.path.parent):
                for s, path in self.paths.items():
                    self.files[s] = open(path, "wb")
        except BaseException:
            self.close()
            raise

    def add(self, split: str, text: str | None) -> None:
        """`text`'s ids, or with None an end-of-text token, after those added before."""
        self.pending.append((split, text))
        self.pending_chars += len(text or "")
        if self.pending_chars >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        ids = iter(self.tok.encode_batch([t for _s, t in self.pending if t is not None]))
        parts = {s: [] for s in SPLITS}
        for split, text in self.pending:
            parts[split].append(self.eot if text is None else next(ids))
        for s, arrays in parts.items():
            if arrays:
                a = np.concatenate(arrays).astype(self.dtype)
                with writing(self.paths[s]):
                    self.files[s].write(a.tobytes())
                self.counts[s] += len(a)
        self.pending.clear()
        self.pending_chars = 0

    def __enter__(self) -> TokenFiles:
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            if kind is None:
                self.flush()
        finally:
            self.close()

    def close(self) -> None:
        for s, f in self.files.items():
            with writing(self.paths[s]):  # the last buffered bytes reach the disk here
                f.close()


class EncodeUnits:
    """`count` over a group of units, as a picklable callable for the worker processes."""

    def __init__(self, tokenizer: BpeTokenizer, val_tails: float | None):
        self.tokenizer, self.val_tails = tokenizer.to_json(), val_tails

    def __call__(self, group: list[ScratchIndex]) -> list[tuple[int, int]]:
        tok = worker_tokenizer(self.tokenizer)
        return [encode_unit(scratch, self.val_tails, tok) for scratch in group]


class Place:
    """`writer` over a group of jobs: each unit's token files copied into its place in the
    shards, then removed."""

    def __init__(self, writers: dict):
        self.writers = writers

    def __call__(self, group: list[EncodeJob]) -> dict:
        made = dict.fromkeys(SPLITS, 0)
        try:
            for job in group:
                for s in SPLITS:
                    made[s] += self.copy(job, s)
        finally:
            for w in self.writers.values():
                w.close()
        return made

    def copy(self, job: EncodeJob, split: str) -> int:
        path, writer = ids_path(job.scratch, split), self.writers[split]
        n = os.path.getsize(path) // writer.dtype.itemsize
        if n != job.expected[split]:
            raise RuntimeError(f"unit {job.index}: {split} holds {n} tokens, expected {job.expected[split]}")
        with open(path, "rb") as f:
            for start in range(0, n, COPY_TOKENS):
                writer.write_at(job.offsets[split] + start, np.fromfile(f, writer.dtype.newbyteorder("<"), COPY_TOKENS))
        path.unlink()
        return n


class BpePass:
    """Pass 2 for a BPE (see the module docstring)."""

    writing = "writing"  # what the writer's progress bar says: the encoding was done by count

    def __init__(self, tokenizer: BpeTokenizer):
        self.tokenizer = tokenizer

    def count(self, units: list, n_seg: dict, unit_counts: list | None, val_tails: float | None, workers: Workers,
              progress: bool) -> dict:
        """split -> each unit's tokens, by encoding it (its segments, `n_seg`, are among them)."""
        expected = {s: np.zeros(len(units), np.int64) for s in SPLITS}
        bar = progress_bar(sum(r.scratch.chars for r in units), "char", "encoding", None if progress else False)
        groups = list(grouped(range(len(units)), lambda i: units[i].scratch.chars + UNIT_COST, GROUP_CHARS))
        counted = workers.map(EncodeUnits(self.tokenizer, val_tails), ([units[i].scratch for i in g] for g in groups))
        for group, counts in zip(groups, counted):
            for i, (train, val) in zip(group, counts):
                expected["train"][i], expected["val"][i] = train, val
                bar.update(units[i].scratch.chars)
        bar.close()
        return expected

    def writer(self, writers: dict) -> Place:
        return Place(writers)
