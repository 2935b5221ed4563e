"""Pass 2: every unit's token count per split, which gives its place in the shards, then its
ids written straight into that place, an end-of-text token after each segment (a document,
or the train or val part of one: `segments`). Two kinds of pass, one shape (`count`, then
`writer`):

- `CharPass` (here), for a character vocabulary: the counts come from the character counts
  pass 1 made, without encoding; then the stored code points are mapped to ids one code
  point batch at a time, whatever the documents' lengths (a character-level tokenizer
  encodes a text in pieces exactly as it encodes it whole).
- `BpePass` (`pass2_bpe`), for a BPE, whose counts are only known by encoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..prepared.data_folder import SPLITS
from ..tokenize.char import CharTokenizer
from ..tokenize.kinds import worker_tokenizer
from .codepoint_files import ScratchIndex
from .segments import document_segments
from .workers import Workers, grouped

# A block that holds at most this many segments (documents, or their parts) is looked up
# whole, once for both splits, and each split's pieces written from it in place, an
# end-of-text token between them, in one system call (`SplitWriter.write_parts`): no copy of
# the ids, and little Python work per piece. A block of more, or with a character outside
# the vocabulary (byte fallback), is gathered by a mask, its end-of-text tokens inserted
# after (two more copies), whose cost does not grow with the count of segments, where
# thousands of tiny records would pay Python's cost per piece thousands of times.
PIECES = 64


@dataclass
class EncodeJob:
    index: int
    scratch: ScratchIndex
    val_tails: float | None  # None: split by document; else the share of each document's end that goes to val
    offsets: dict  # split -> position of this unit's first token in the split
    expected: dict  # split -> tokens this unit must produce

    @property
    def chars(self) -> int:
        return self.scratch.chars


def encode_unit(job: EncodeJob, tok: CharTokenizer, writers: dict) -> dict:
    with job.scratch.open() as f:  # opened once, for the trailer and the blocks
        made = _encode_unit(job, tok, writers, f)  # its views of the mapped file end with it
    job.scratch.path.unlink()  # done with it: frees the disk now, and in parallel, not at the end
    return made


def _encode_unit(job: EncodeJob, tok: CharTokenizer, writers: dict, f: BinaryIO) -> dict:
    seg_val, seg_chars = document_segments(job.scratch, job.val_tails, f)
    seg_end = np.cumsum(seg_chars)
    offsets = dict(job.offsets)
    dtype = writers[SPLITS[0]].dtype  # both splits' shards hold ids of the vocabulary's type
    eot = np.array([tok.eot_id], dtype)
    start = 0
    for block in job.scratch.blocks(f=f):
        end = start + len(block)
        # the segments this block overlaps, and which part of the block each holds
        lo = int(np.searchsorted(seg_end, start, "right"))
        hi = min(int(np.searchsorted(seg_end, end, "left")), len(seg_end) - 1) + 1
        ends = seg_end[lo:hi]
        first, last = np.maximum(ends - seg_chars[lo:hi], start) - start, np.minimum(ends, end) - start
        closed = ends <= end  # segments that end in this block: an end-of-text token follows
        val = seg_val[lo:hi]
        ids = tok.lookup(block, dtype) if len(ends) <= PIECES else None
        chars_in_val = None if ids is not None or val.all() or not val.any() else np.repeat(val, last - first)
        for split, flag in zip(SPLITS, (False, True)):
            sel = val == flag
            if not sel.any():
                continue
            if ids is not None:
                parts = pieces_with_ends(ids, first[sel].tolist(), last[sel].tolist(), closed[sel].tolist(), eot)
                offsets[split] += writers[split].write_parts(offsets[split], parts)
                continue
            cps = block if chars_in_val is None else block[chars_in_val if flag else ~chars_in_val]
            eots = np.cumsum((last - first)[sel])[closed[sel]]
            gathered = tok.encode_codepoints(cps, eots, dtype=dtype)
            writers[split].write_at(offsets[split], gathered)
            offsets[split] += len(gathered)
        start = end
    made = {s: offsets[s] - job.offsets[s] for s in SPLITS}
    for s in SPLITS:
        if made[s] != job.expected[s]:
            raise RuntimeError(f"unit {job.index}: {s} produced {made[s]} tokens, expected {job.expected[s]}")
    return made


def pieces_with_ends(ids: np.ndarray, first: list, last: list, closed: list, eot: np.ndarray) -> list:
    """The views ids[first:last] of a block's pieces, each closed one followed by `eot`."""
    parts = []
    for a, b, c in zip(first, last, closed):
        parts.append(ids[a:b])
        if c:
            parts.append(eot)
    return parts


def unit_tokens(tokenizer: CharTokenizer, units: list, n_seg: dict, unit_counts: list | None,
                workers: Workers) -> dict:
    """Tokens each unit will produce per split (characters, byte tokens, one end-of-text
    token per segment: `n_seg`), as split -> array. `unit_counts`: the units' per-split
    counts when documents are split inside; else they are read back from the scratch
    trailers, by the workers, and only where byte fallback makes a character more than one
    token (outside ASCII)."""
    expected = {s: n_seg[s].copy() for s in SPLITS}
    for i, r in enumerate(units):
        for s in SPLITS:
            expected[s][i] += r.chars[s] if unit_counts is None else tokenizer.token_lengths(*unit_counts[i][s])
    if unit_counts is None and tokenizer.oov == "byte":
        wide = [i for i, r in enumerate(units) if r.max_codepoint >= 0x80]
        groups = grouped(wide, lambda i: 1, 256)
        counted = workers.map(CountTokens(tokenizer), ([units[i].scratch for i in g] for g in groups))
        for i, tokens in zip(wide, (t for group in counted for t in group)):
            for s, n in zip(SPLITS, tokens):
                expected[s][i] += n - units[i].chars[s]  # byte tokens beyond one per character
    return expected


class CountTokens:
    """The tokens of each unit of a group per split, from the character counts in its
    scratch trailer: a picklable callable for the worker processes."""

    def __init__(self, tokenizer: CharTokenizer):
        self.tokenizer = tokenizer.to_json()

    def __call__(self, group: list[ScratchIndex]) -> list[tuple[int, int]]:
        tok = worker_tokenizer(self.tokenizer)
        return [tuple(tok.token_lengths(*counts[s]) for s in SPLITS) for counts in (sc.counts() for sc in group)]


class Encode:
    """Pass 2 over a group of jobs, as a picklable callable for the worker processes."""

    def __init__(self, tokenizer: CharTokenizer, writers: dict):
        self.tokenizer, self.writers = tokenizer.to_json(), writers

    def __call__(self, group: list[EncodeJob]) -> dict:
        tok = worker_tokenizer(self.tokenizer)
        try:
            made = [encode_unit(job, tok, self.writers) for job in group]
        finally:
            for w in self.writers.values():
                w.close()
        return {s: sum(m[s] for m in made) for s in SPLITS}


class CharPass:
    """Pass 2 for a character vocabulary (see the module docstring)."""

    writing = "encoding"  # what the writer's progress bar says

    def __init__(self, tokenizer: CharTokenizer):
        self.tokenizer = tokenizer

    def count(self, units: list, n_seg: dict, unit_counts: list | None, val_tails: float | None, workers: Workers,
              progress: bool) -> dict:
        """split -> each unit's tokens; `n_seg`: split -> each unit's segments (segment_counts)."""
        return unit_tokens(self.tokenizer, units, n_seg, unit_counts, workers)

    def writer(self, writers: dict) -> "Encode":
        return Encode(self.tokenizer, writers)
