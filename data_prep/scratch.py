"""The scratch format between the two passes: a unit's documents as code points, stored
in batches of uint16 where they fit (uint32 otherwise), and its character counts."""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .tokenizer import codepoints

BATCH_CHARS = 1 << 23  # characters converted, counted and encoded per numpy call


def add_counts(dense: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if len(counts) > len(dense):
        counts[: len(dense)] += dense
        return counts
    dense[: len(counts)] += counts
    return dense


def sparse(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code points, counts) of the non-zero entries, in 32 bits where they fit: the main
    process holds one pair per split and unit of work until pass 2."""
    nz = np.flatnonzero(dense)
    counts = dense[nz]
    return nz.astype(np.uint32), counts.astype(np.uint32) if len(counts) and counts.max() < 2**32 else counts


def val_hash(cps: np.ndarray, val_fraction: float) -> bool:
    """A document goes to val by a hash of its content (its first chunk: the whole text for
    all but very large documents), so identical texts always share a split."""
    h = (zlib.crc32(cps) * 0x9E3779B1) & 0xFFFFFFFF  # crc32, bits mixed by a Fibonacci multiplier
    return h < val_fraction * 2**32


class ScratchWriter:
    """Collects a unit's text chunks and, per batch, converts them to code points once:
    they decide each new document's split, are counted, then stored for pass 2."""

    def __init__(self, path: Path, val_fraction: float):
        self.file = open(path, "wb")
        self.val_fraction = val_fraction
        self.batches: list[tuple[int, int, int]] = []  # (byte offset, characters, bytes per char)
        self.offset = 0
        self.texts: list[str] = []
        self.new_doc: list[bool] = []
        self.pending = 0
        self.docs_val: list[bool] = []
        self.all_counts = np.zeros(0, np.int64)
        self.val_counts = np.zeros(0, np.int64)

    def add(self, text: str, new_doc: bool) -> None:
        self.texts.append(text)
        self.new_doc.append(new_doc)
        self.pending += len(text)
        if self.pending >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        if not self.texts:
            return
        cps = codepoints("".join(self.texts))
        val_parts, end = [], 0
        for text, new in zip(self.texts, self.new_doc):
            start, end = end, end + len(text)
            if new:
                self.docs_val.append(val_hash(cps[start:end], self.val_fraction))
            if self.docs_val[-1]:
                val_parts.append(cps[start:end])
        stored = cps.astype(np.uint16) if int(cps.max()) < 0x10000 else cps
        self.all_counts = add_counts(self.all_counts, np.bincount(stored))
        if val_parts:
            self.val_counts = add_counts(self.val_counts, np.bincount(np.concatenate(val_parts)))
        self.file.write(stored)
        self.batches.append((self.offset, len(cps), stored.itemsize))
        self.offset += stored.nbytes
        self.texts, self.new_doc, self.pending = [], [], 0

    def close(self) -> None:
        self.flush()
        self.file.close()

    def counts(self) -> dict:
        train = self.all_counts.copy()
        train[: len(self.val_counts)] -= self.val_counts
        return {"train": sparse(train), "val": sparse(self.val_counts)}


class ScratchReader:
    def __init__(self, path: Path, batches: np.ndarray):
        self.path, self.batches = path, batches
        self.starts = np.concatenate(([0], np.cumsum(batches[:, 1]))) if len(batches) else np.zeros(1, np.int64)

    def blocks(self, start: int = 0, n: int | None = None) -> Iterator[np.ndarray]:
        """Code points [start, start + n) as arrays of at most one batch each."""
        n = int(self.starts[-1] - start if n is None else n)
        with open(self.path, "rb") as f:
            b = int(np.searchsorted(self.starts, start, "right") - 1)
            while n > 0:
                offset, chars, width = (int(x) for x in self.batches[b])
                local = start - int(self.starts[b])
                take = min(n, chars - local)
                f.seek(offset + local * width)
                yield np.fromfile(f, dtype=np.uint16 if width == 2 else np.uint32, count=take)
                start, n, b = start + take, n - take, b + 1
