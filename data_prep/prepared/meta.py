"""meta.json: what a prepared folder holds and how it was made.

A character folder's meta.json is exactly what it was before BPE existed (format version 1,
no new fields), so older toolkits keep reading it. A BPE folder's is version 2 and adds
`tokenizer_kind`, each split's `tokens_per_character` (the factor that turns nats per token
into bits per character) and a `bpe` summary."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from ..options import BPE_BASE, BPE_ONLY, CHAR_ONLY, PrepareOptions
from ..tokenize.char import Totals
from ..tokenize.kinds import Tokenizer
from ..tokenize.tokenizer_file import TOKENIZER_FILE
from .data_folder import DATA_FORMAT, DATA_VERSIONS, SPLITS


def build_meta(
    tokenizer: Tokenizer, opts: PrepareOptions, *, doc_split: bool, tokens: dict, documents: dict,
    shards: dict, total: Totals, in_vocab: np.ndarray | None, sources: list[dict], skipped: dict,
) -> dict:
    """`total`: split -> dense character counts; `shards`: split -> shard file names;
    `in_vocab`: which code points a character vocabulary holds (None for a BPE)."""
    chars = {s: int(total[s].sum()) for s in SPLITS}
    bpe = tokenizer.kind == "bpe"
    meta = {
        "format": DATA_FORMAT,
        "version": DATA_VERSIONS[tokenizer.kind],
        "tokenizer": TOKENIZER_FILE,
        **({"tokenizer_kind": tokenizer.kind} if bpe else {}),
        "vocab_size": len(tokenizer),
        "dtype": tokenizer.dtype.name,
        "split_mode": "document" if doc_split else "text",
        "splits": {
            s: {"tokens": tokens[s], "documents": documents[s], "characters": chars[s], "shards": shards[s],
                **({"tokens_per_character": tokens[s] / chars[s]} if bpe else {})}
            for s in SPLITS
        },
        "coverage": bpe_coverage(total) if bpe else char_coverage(tokenizer, total, in_vocab),
    }
    if bpe:
        learned_on = "train" if opts.vocab_from is None else "base"
        meta["bpe"] = {"merges": len(tokenizer.merges), "base_tokens": BPE_BASE, "learned_on": learned_on}
    left_out = ("workers", "force", "progress", *(CHAR_ONLY if bpe else BPE_ONLY))
    options = {k: v for k, v in asdict(opts).items() if k not in left_out}
    if "oov" in options and options["oov"] is None:
        options["oov"] = "byte"  # the default (byte fallback where needed), recorded as meta.json always recorded it
    return {**meta, "sources": sources, "skipped": skipped, "options": options}


def char_coverage(tokenizer: Tokenizer, total: Totals, in_vocab: np.ndarray) -> dict:
    seen = total.seen
    inside = in_vocab[seen]
    counts = {s: total[s][seen] for s in SPLITS}
    chars = {s: int(counts[s].sum()) for s in SPLITS}
    return {
        **{s: float(counts[s][inside].sum() / chars[s]) for s in SPLITS},
        "distinct_characters": len(seen),
        "vocabulary_characters": len(tokenizer.chars),
        "byte_fallback": tokenizer.oov == "byte",
        "unknown_token": tokenizer.oov == "unk",
        # characters the vocabulary lacks (bytes or the unknown token stand in for them)
        "outside_characters": {
            **{s: int(counts[s][~inside].sum()) for s in SPLITS},
            "distinct": int((~inside).sum()),
        },
    }


def bpe_coverage(total: Totals) -> dict:
    """A byte-level BPE encodes every character (as its bytes at worst): nothing is outside."""
    return {
        **{s: 1.0 for s in SPLITS},
        "distinct_characters": len(total.seen),
        "byte_level": True,
    }
