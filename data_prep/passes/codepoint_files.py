"""The code point files between the two passes (the scratch files of the work folder), one
per unit of work: its documents' code points in batches (in the narrowest of uint8, uint16
and uint32 that holds a batch: a batch of one-byte characters, ASCII source code say, is
written, read back and counted one byte each), then a trailer of what pass 2 needs: each
document's length and split, and the unit's character counts.

The main process keeps only a few numbers per unit (`ScratchIndex`); the per-document and
per-character arrays wait on disk, so its memory does not grow with the corpus.
"""
from __future__ import annotations

import mmap
from array import array
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from plumbing.fast_zlib import crc32

from ..errors import writing
from ..prepared.data_folder import SPLITS
from ..tokenize.char import codepoints

BATCH_CHARS = 1 << 18  # characters converted, counted and encoded per numpy call. 256 K: their
# arrays (1 MB as uint32) come from the allocator's reused memory, where 4 M (16 MB) took fresh
# pages from the kernel at every batch; and one character above U+FFFF widens only its own
# batch's scratch to four bytes a character. On small documents this cut the system time
# by half and the wall time by 10-15% (2-core Intel Xeon), and calls this long cost little
# extra per call


def add_counts(dense: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if len(counts) > len(dense):
        counts[: len(dense)] += dense
        return counts
    dense[: len(counts)] += counts
    return dense


CHUNK = 1 << 16  # code points per np.bincount call (see `count`)


def count(stored: np.ndarray) -> np.ndarray:
    """np.bincount of code points. np.bincount first copies its input to int64, eight bytes
    a code point, through fresh memory: code points are counted a chunk at a time, whose
    copy stays in cache. (Bytes were once counted two at a time, into a 65,536-entry table;
    once both were chunked, counting them one by one took as long or less: 0.79-0.88 s
    against 0.87-0.88 s for the 372 M code points of the small-documents bench, 2-core
    Intel Xeon.) A chunk's counts go as far as its own largest code point: one emoji widens
    the table of its own chunk to 1 MB, not every chunk's of its four-byte batch."""
    counts = np.zeros(0, np.int64)
    for start in range(0, len(stored), CHUNK):
        counts = add_counts(counts, np.bincount(stored[start : start + CHUNK]))
    return counts


def narrowest(cps: np.ndarray) -> np.ndarray:
    """`cps` in the narrowest unsigned type that holds them all."""
    top = int(cps.max()) if len(cps) else 0
    return cps.astype(np.uint8) if top < 0x100 else cps.astype(np.uint16) if top < 0x10000 else cps


WIDTHS = {1: np.uint8, 2: np.uint16, 4: np.uint32}  # bytes per code point -> its type


def split_sparse(whole: np.ndarray, val: np.ndarray) -> dict:
    """split -> (code points, counts), from the dense counts of all characters and of val's
    (no longer than all's). One search for the code points counted, in all's table alone:
    a table reaches an emoji's code point (1 MB), and each search is a pass over it."""
    nz = np.flatnonzero(whole)
    counted = whole[nz]
    in_val = np.zeros(len(nz), np.int64)
    inside = nz < len(val)
    in_val[inside] = val[nz[inside]]
    cps, train = nz.astype(np.uint32), counted - in_val
    if len(val) > len(whole) or (train < 0).any():  # val's characters are some of all's: never more
        raise RuntimeError("a unit's val counts exceed its counts of all characters")
    return {"train": (cps[train > 0], train[train > 0]), "val": (cps[in_val > 0], in_val[in_val > 0])}


HASH_CHARS = 1 << 22  # a document's split is decided by a hash of at most its first this many characters


def in_val(crc: int, val_fraction: float) -> bool:
    """A document goes to val by a hash of its content (crc32 of the code points of its
    first HASH_CHARS characters, or all of a shorter one), so identical texts always share a
    split, however they were stored (a file, a tar member, a record) and read (whole or in
    pieces); and a long document's split is known before its end."""
    h = (crc * 0x9E3779B1) & 0xFFFFFFFF  # crc32, bits mixed by a Fibonacci multiplier
    return h < val_fraction * 2**32


@dataclass
class ScratchIndex:
    """Where a unit's scratch file keeps what: its batches of code points and its trailer."""

    path: Path
    batches: np.ndarray  # rows of (byte offset, characters, bytes per char)
    arrays: dict = field(default_factory=dict)  # name -> (byte offset, dtype, length)

    @property
    def chars(self) -> int:
        return int(self.batches[:, 1].sum()) if len(self.batches) else 0

    def open(self) -> BinaryIO:
        return open(self.path, "rb")

    def trailer(self, f: BinaryIO | None = None) -> dict[str, np.ndarray]:
        """The trailer's arrays, read in one go (from `f`, the file opened, if given)."""
        start = min(offset for offset, _, _ in self.arrays.values())
        with nullcontext(f) if f is not None else self.open() as f:
            f.seek(start)
            raw = f.read()
        return {name: np.frombuffer(raw, dtype, n, offset - start) for name, (offset, dtype, n) in self.arrays.items()}

    def counts(self) -> dict:
        """split -> (code points, counts), the split by document hash."""
        t = self.trailer()
        return {s: (t[f"{s}_cps"], t[f"{s}_counts"]) for s in SPLITS}

    def blocks(self, start: int = 0, n: int | None = None, f: BinaryIO | None = None) -> Iterator[np.ndarray]:
        """Code points [start, start + n) as arrays of at most one batch each (from `f`, the
        file opened, if given). Each is a read-only view of its own bytes of the file
        mapped: the page cache's pages, with no copy made (pass 2 took a fifth less time
        than reading them), and unmapped when the view is dropped, so a process holds no
        more of the file than the blocks it keeps. Where the file system cannot map files
        (some FUSE mounts), the blocks are read instead. The file is this run's alone until
        pass 2 removes it; a read error in a mapped block would end the worker with a
        signal, which the run reports as a worker that died."""
        starts = np.concatenate(([0], np.cumsum(self.batches[:, 1])))
        n = int(starts[-1] - start if n is None else n)
        with nullcontext(f) if f is not None else self.open() as f:
            b = int(np.searchsorted(starts, start, "right") - 1)
            while n > 0:
                offset, chars, width = (int(x) for x in self.batches[b])
                local = start - int(starts[b])
                take = min(n, chars - local)
                yield block_at(f, offset + local * width, take, WIDTHS[width])
                start, n, b = start + take, n - take, b + 1


def block_at(f: BinaryIO, at: int, n: int, dtype: type) -> np.ndarray:
    """`n` values of `dtype` at byte `at` of the file `f`: mapped (see `ScratchIndex.blocks`),
    or read where the file system cannot map files."""
    page = at - at % mmap.ALLOCATIONGRANULARITY  # a mapping starts at a page
    try:
        view = mmap.mmap(f.fileno(), at + n * np.dtype(dtype).itemsize - page, offset=page, access=mmap.ACCESS_READ)
    except OSError:
        f.seek(at)
        return np.fromfile(f, dtype=dtype, count=n)
    return np.frombuffer(view, dtype, n, at - page)


class ScratchWriter:
    """Collects a unit's documents, chunk by chunk, and per batch converts them to code
    points once: they are hashed (which decides each document's split), counted per split,
    then stored. A document longer than a batch spans several: its counts wait in
    `open_counts` until its end decides its split."""

    def __init__(self, path: Path, val_fraction: float):
        with writing(path):
            self.path, self.file = path, open(path, "wb")
        self.val_fraction = val_fraction
        self.batches: list[tuple[int, int, int]] = []
        self.offset = 0
        self.events: list[str | None] = []  # text chunks, None where a document ends
        self.pending = 0
        self.docs_chars, self.docs_val = array("q"), bytearray()
        self.all_counts = np.zeros(0, np.int64)
        self.val_counts = np.zeros(0, np.int64)
        # the document being written: its characters, those hashed, the running crc32, its
        # split (None until decided) and the counts of its characters stored before that
        self.doc_chars, self.hashed, self.crc, self.val = 0, 0, 0, None
        self.open_counts = np.zeros(0, np.int64)

    def start_document(self) -> None:
        self.doc_chars = 0

    def add(self, text: str) -> None:
        if text:
            self.events.append(text)
            self.doc_chars += len(text)
            self.pending += len(text)
            if self.pending >= BATCH_CHARS:
                self.flush()

    def end_document(self) -> None:
        if self.doc_chars:  # an empty document is no document
            self.events.append(None)
            self.docs_chars.append(self.doc_chars)

    def flush(self) -> None:
        texts = [e for e in self.events if e is not None]
        cps = codepoints("".join(texts)) if texts else np.zeros(0, np.uint32)
        stored = narrowest(cps)
        val_parts, undecided = self.split_chunks(cps, stored)
        if undecided:
            self.open_counts = add_counts(self.open_counts, count(np.concatenate(undecided)))
        if len(cps):
            self.all_counts = add_counts(self.all_counts, count(stored))
            if val_parts:
                self.val_counts = add_counts(self.val_counts, count(np.concatenate(val_parts)))
            self.write(stored)
            self.batches.append((self.offset, len(cps), stored.itemsize))
            self.offset += stored.nbytes
            self.pad()
        self.events, self.pending = [], 0

    def split_chunks(self, cps: np.ndarray, stored: np.ndarray) -> tuple[list, list]:
        """The batch's chunks (slices of `stored`) that go to val, and those of a document
        whose split is still open at the batch's end. Each chunk feeds its document's hash
        until the split is decided: at its HASH_CHARS-th character, or at its end."""
        val_parts, undecided, end = [], [], 0
        for event in self.events:
            if event is None:
                val_parts += self.end_of_document(undecided)
                undecided = []
                continue
            start, end = end, end + len(event)
            if self.val is None:
                take = min(end - start, HASH_CHARS - self.hashed)
                # of the uint32 code points, whatever is stored
                self.crc = crc32(cps[start : start + take], self.crc)
                self.hashed += take
                if self.hashed == HASH_CHARS:
                    self.val = in_val(self.crc, self.val_fraction)
            (undecided if self.val is None else val_parts if self.val else []).append(stored[start:end])
        return val_parts, undecided

    def end_of_document(self, undecided: list) -> list:
        """A document ends: its split is decided now if it was still open. Returns the
        chunks of this batch that were waiting for it and go to val."""
        if self.val is None:
            self.val = in_val(self.crc, self.val_fraction)
        if self.val:
            self.val_counts = add_counts(self.val_counts, self.open_counts)  # its chunks from earlier batches
        self.docs_val.append(self.val)
        to_val = undecided if self.val else []
        self.crc, self.hashed, self.val, self.open_counts = 0, 0, None, np.zeros(0, np.int64)
        return to_val

    def close(self) -> tuple[ScratchIndex, dict]:
        """Store the trailer; returns the index and split -> (code points, counts)."""
        self.flush()
        counts = split_sparse(self.all_counts, self.val_counts)
        trailer = {
            "docs_chars": np.frombuffer(self.docs_chars, np.int64) if self.docs_chars else np.zeros(0, np.int64),
            "docs_val": np.frombuffer(bytes(self.docs_val), np.uint8),
            **{f"{s}_{k}": a for s in SPLITS for k, a in zip(("cps", "counts"), counts[s])},
        }
        arrays = {}
        for name, a in trailer.items():
            arrays[name] = (self.offset, a.dtype.str, len(a))
            self.write(a.tobytes())
            self.offset += a.nbytes
            self.pad()
        with writing(self.path):
            self.file.close()
        return ScratchIndex(self.path, np.array(self.batches, np.int64).reshape(-1, 3), arrays), counts

    def pad(self) -> None:
        """Zeros up to the next multiple of 8 bytes, so that every batch and trailer array
        starts aligned for its type (a wider batch after an odd-length one-byte batch would
        otherwise be read as an unaligned array, which numpy handles on slower paths)."""
        if self.offset % 8:
            self.write(bytes(-self.offset % 8))
            self.offset += -self.offset % 8

    def write(self, data) -> None:
        with writing(self.path):
            self.file.write(data)

    def abandon(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
