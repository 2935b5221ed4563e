"""A unit's segments: the pieces of its text that each end in an end-of-text token, its
documents, or, when the corpus is split inside the text, each document's train head and
val tail. Where they lie in the unit's code point file, how many each split gets, the
character counts of a split inside the text; and their text read back, for the BPE, which
learns from text and encodes text where the character path maps code points. Memory stays
bounded: a segment comes as a stream of chunks (at most one code point batch each), and
`safe_pieces` cuts it where its ids do not change."""
from __future__ import annotations

from itertools import groupby
from typing import BinaryIO, Iterator

import numpy as np

from ..prepared.data_folder import SPLITS
from ..tokenize.bpe_training import learn_bpe
from ..tokenize.char import Totals
from ..tokenize.safe_cuts import safe_pieces
from .codepoint_files import ScratchIndex, add_counts, split_sparse


def document_segments(scratch: ScratchIndex, val_tails: float | None,
                      f: BinaryIO | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A unit's segments as (in val?, characters) arrays: its documents, split by document
    hash, or (`val_tails`) each split inside into a train head and a val tail, empty parts
    left out."""
    trailer = scratch.trailer(f)
    docs_chars = trailer["docs_chars"]
    if val_tails is None:
        return trailer["docs_val"].astype(bool), docs_chars
    tails = np.round(docs_chars * val_tails).astype(np.int64)
    in_val = np.tile([False, True], len(docs_chars))
    chars = np.stack([docs_chars - tails, tails], axis=1).ravel()
    return in_val[chars > 0], chars[chars > 0]


def segment_counts(units: list, val_tails: float | None) -> dict:
    """Segments (so end-of-text tokens) of each unit per split, as split -> array."""
    n_seg = {s: np.zeros(len(units), np.int64) for s in SPLITS}
    for i, r in enumerate(units):
        if val_tails is None:
            n_seg["train"][i], n_seg["val"][i] = r.documents - r.val_documents, r.val_documents
        else:
            seg_val = document_segments(r.scratch, val_tails)[0]
            n_seg["train"][i], n_seg["val"][i] = len(seg_val) - int(seg_val.sum()), int(seg_val.sum())
    return n_seg


def recount_text_split(scratch: ScratchIndex, val_tails: float) -> dict:
    """Per-split counts when documents are split inside: count the val tails, subtract."""
    counts = scratch.counts().values()
    whole = np.zeros(1 + max((int(cps[-1]) for cps, _ in counts if len(cps)), default=0), np.int64)
    for cps, n in counts:
        whole[cps] += n
    val = np.zeros(0, np.int64)
    start = 0
    with scratch.open() as f:  # opened once, not once per segment
        for is_val, n in zip(*(a.tolist() for a in document_segments(scratch, val_tails, f))):
            if is_val:
                for block in scratch.blocks(start, n, f):
                    val = add_counts(val, np.bincount(block))
            start += n
    return split_sparse(whole, val)


def summed(unit_counts: list[dict]) -> dict:
    """split -> dense counts up to the largest code point counted (as `Tally.finish` leaves
    them), from units' split -> (code points, counts)."""
    top = max((int(c[s][0][-1]) for c in unit_counts for s in SPLITS if len(c[s][0])), default=0)
    total = {s: np.zeros(top + 1, np.int64) for s in SPLITS}
    for counts in unit_counts:
        for s in SPLITS:
            total[s][counts[s][0]] += counts[s][1]
    return Totals(total)


# -- segments as text ------------------------------------------------------------------------
def as_text(cps: np.ndarray) -> str:
    if cps.dtype == np.uint8:  # one byte a character: these are Latin-1's
        return cps.tobytes().decode("latin-1")
    return cps.astype("<u4", copy=False).tobytes().decode("utf-32-le")


def segment_chunks(scratch: ScratchIndex, val_tails: float | None, f: BinaryIO) -> Iterator[tuple[int, bool, str]]:
    """(segment number, in val?, text) for each part of a segment that one code point batch
    holds, in order."""
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


def segment_pieces(scratch: ScratchIndex, val_tails: float | None,
                   f: BinaryIO) -> Iterator[tuple[bool, Iterator[str]]]:
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


class LearnBpe:
    """`learn_bpe` on the training split's text, as a picklable callable for a worker
    process; the tokenizer comes back as its JSON. It runs in a worker when there are
    workers: the library's threads then never start in the main process, which forks the
    workers (a process forked after the library's threads have run gets the library's
    warning and loses its parallelism)."""

    def __init__(self, val_tails: float | None, vocab_size: int, progress_chars: int | None = None):
        self.val_tails, self.vocab_size, self.progress_chars = val_tails, vocab_size, progress_chars

    def __call__(self, scratches: list[ScratchIndex]) -> str:
        return learn_bpe(train_texts(scratches, self.val_tails), self.vocab_size, self.progress_chars).to_json()
