"""A unit's segments (its documents, or their train and val parts) read back from its scratch
file as text, for the BPE, which learns from text and encodes text where the character path
maps code points. Memory stays bounded: a segment comes as a stream of chunks (at most one
scratch batch each), and `safe_pieces` cuts it where its ids do not change."""
from __future__ import annotations

from itertools import groupby
from typing import BinaryIO, Iterator

import numpy as np

from .encode import document_segments
from .pieces import safe_pieces
from .scratch import ScratchIndex


def as_text(cps: np.ndarray) -> str:
    if cps.dtype == np.uint8:  # one byte a character: these are Latin-1's
        return cps.tobytes().decode("latin-1")
    return cps.astype("<u4", copy=False).tobytes().decode("utf-32-le")


def segment_chunks(scratch: ScratchIndex, val_tails: float | None, f: BinaryIO) -> Iterator[tuple[int, bool, str]]:
    """(segment number, in val?, text) for each part of a segment that one scratch batch holds,
    in order."""
    seg_val, seg_chars = document_segments(scratch, val_tails, f)
    seg_end = np.cumsum(seg_chars)
    start = 0
    for block in scratch.blocks(f=f):
        end = start + len(block)
        lo = int(np.searchsorted(seg_end, start, "right"))
        hi = int(np.searchsorted(seg_end, end, "left"))
        for seg in range(lo, min(hi, len(seg_end) - 1) + 1):
            a, b = max(int(seg_end[seg] - seg_chars[seg]), start), min(int(seg_end[seg]), end)
            if b > a:
                yield seg, bool(seg_val[seg]), as_text(block[a - start : b - start])
        start = end


def segment_pieces(scratch: ScratchIndex, val_tails: float | None, f: BinaryIO) -> Iterator[tuple[bool, Iterator[str]]]:
    """Per segment, in order: (in val?, its text in safe pieces). Each segment's pieces must be
    read before the next segment's (they share one pass over the file)."""
    for (_seg, in_val), chunks in groupby(segment_chunks(scratch, val_tails, f), key=lambda c: c[:2]):
        yield in_val, safe_pieces(text for _s, _v, text in chunks)


def train_texts(scratches: list[ScratchIndex], val_tails: float | None) -> Iterator[str]:
    """The training split's text, unit after unit, in safe pieces (what the BPE learns from)."""
    for scratch in scratches:
        with scratch.open() as f:
            for in_val, pieces in segment_pieces(scratch, val_tails, f):
                for piece in pieces:
                    if not in_val:
                        yield piece
