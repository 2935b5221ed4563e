"""Pass 2: a unit's stored code points mapped to token ids and written straight into their
place in the shards, an end-of-text token after each segment (a document, or the train or
val part of one)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .dataset import SPLITS
from . import scratch as scratch_format  # its BATCH_CHARS read at call time: tests shrink it
from .scratch import ScratchReader, add_counts, sparse
from .tokenizer import CharTokenizer

N_CODEPOINTS = 0x110000


@dataclass
class EncodeJob:
    index: int
    scratch: ScratchReader
    segments: tuple  # (in val?, characters) arrays, in order; an end-of-text token follows each
    offsets: dict  # split -> position of this unit's first token in the split
    expected: dict  # split -> tokens this unit must produce

    @property
    def chars(self) -> int:
        return int(self.scratch.starts[-1])


def document_segments(docs_chars: np.ndarray, docs_val: np.ndarray | None, tails: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A unit's segments as (in val?, characters) arrays: its documents, split by document
    (`docs_val`), or each split inside into a train head and a val tail (`tails`: characters
    to val), empty parts left out."""
    if docs_val is not None:
        return docs_val.astype(bool), docs_chars.astype(np.int64)
    in_val = np.tile([False, True], len(docs_chars))
    chars = np.stack([docs_chars - tails, tails], axis=1).ravel()
    return in_val[chars > 0], chars[chars > 0]


def segment_list(segments: tuple[np.ndarray, np.ndarray]) -> list[tuple[str, int]]:
    return [(SPLITS[v], n) for v, n in zip(segments[0].tolist(), segments[1].tolist())]  # SPLITS[True] is "val"


def encode_unit(job: EncodeJob, tok: CharTokenizer, writers: dict) -> dict:
    pieces: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    eots: dict[str, list[int]] = {s: [] for s in SPLITS}
    pending = {s: 0 for s in SPLITS}
    offsets = dict(job.offsets)

    def flush(split: str) -> None:
        if pieces[split]:
            cps = pieces[split][0] if len(pieces[split]) == 1 else np.concatenate(pieces[split])
            ids = tok.encode_codepoints(cps, eots[split], dtype=writers[split].dtype)
            writers[split].write_at(offsets[split], ids)
            offsets[split] += len(ids)
        pieces[split], eots[split], pending[split] = [], [], 0

    blocks = job.scratch.blocks()
    block, pos = np.zeros(0, np.uint16), 0
    for split, n in segment_list(job.segments):
        while n:
            if pos == len(block):
                block, pos = next(blocks), 0
            take = min(n, len(block) - pos)
            pieces[split].append(block[pos : pos + take])
            pending[split] += take
            pos, n = pos + take, n - take
        eots[split].append(pending[split])
        if pending[split] >= scratch_format.BATCH_CHARS:
            flush(split)
    for split in SPLITS:
        flush(split)
        made = offsets[split] - job.offsets[split]
        if made != job.expected[split]:
            raise RuntimeError(f"unit {job.index}: {split} produced {made} tokens, expected {job.expected[split]}")
    job.scratch.path.unlink()  # done with it: frees the disk now, and in parallel, not at the end
    return {s: offsets[s] - job.offsets[s] for s in SPLITS}


def tokens_per_unit(tokenizer: CharTokenizer, counts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Tokens the characters of each unit encode to, given its (code points, counts): the
    tokenizer's token_lengths for every unit in one go."""
    sizes = np.array([len(cps) for cps, _ in counts], np.int64)
    if not sizes.sum():
        return np.zeros(len(counts), np.int64)
    cps = np.concatenate([cps for cps, _ in counts])
    n = np.concatenate([n for _, n in counts]).astype(np.int64)
    running = np.concatenate(([0], np.cumsum(tokenizer.tokens_per_char(cps) * n)))
    ends = np.cumsum(sizes)
    return running[ends] - running[ends - sizes]


def recount_text_split(scratch: ScratchReader, counts: dict, segments: tuple[np.ndarray, np.ndarray]) -> dict:
    """Per-split counts when documents are split inside: count the val tails, subtract."""
    whole = np.zeros(N_CODEPOINTS, np.int64)
    for s in SPLITS:
        whole[counts[s][0]] += counts[s][1]
    val = np.zeros(0, np.int64)
    start = 0
    for split, n in segment_list(segments):
        if split == "val":
            for block in scratch.blocks(start, n):
                val = add_counts(val, np.bincount(block))
        start += n
    whole[: len(val)] -= val
    return {"train": sparse(whole), "val": sparse(val)}


@lru_cache(maxsize=1)
def _tokenizer(spec: str) -> CharTokenizer:
    return CharTokenizer.from_json(spec)  # once per worker process, not once per group


class Encode:
    """Pass 2 over a group of jobs, as a picklable callable for the worker processes."""

    def __init__(self, tokenizer: CharTokenizer, writers: dict):
        self.tokenizer, self.writers = tokenizer.to_json(), writers

    def __call__(self, group: list[EncodeJob]) -> dict:
        tok = _tokenizer(self.tokenizer)
        made = [encode_unit(job, tok, self.writers) for job in group]
        return {s: sum(m[s] for m in made) for s in SPLITS}
