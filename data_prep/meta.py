"""meta.json: what a prepared folder holds and how it was made."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .dataset import DATA_FORMAT, DATA_VERSION, SPLITS, TOKENIZER_FILE
from .options import PrepareOptions
from .tokenizer import CharTokenizer


def build_meta(
    tokenizer: CharTokenizer, opts: PrepareOptions, *, doc_split: bool, tokens: dict, documents: dict,
    shards: dict, total: dict, in_vocab: np.ndarray, sources: list[dict], skipped: dict,
) -> dict:
    """`total`: split -> dense character counts; `shards`: split -> shard file names."""
    chars = {s: int(total[s].sum()) for s in SPLITS}
    return {
        "format": DATA_FORMAT,
        "version": DATA_VERSION,
        "tokenizer": TOKENIZER_FILE,
        "vocab_size": len(tokenizer),
        "dtype": tokenizer.dtype.name,
        "split_mode": "document" if doc_split else "text",
        "splits": {
            s: {"tokens": tokens[s], "documents": documents[s], "characters": chars[s], "shards": shards[s]}
            for s in SPLITS
        },
        "coverage": {
            **{s: float((total[s] * in_vocab).sum() / chars[s]) for s in SPLITS},
            "distinct_characters": int(((total["train"] + total["val"]) > 0).sum()),
            "vocabulary_characters": len(tokenizer.chars),
            "byte_fallback": tokenizer.oov == "byte",
            "unknown_token": tokenizer.oov == "unk",
            # characters the vocabulary lacks (bytes or the unknown token stand in for them)
            "outside_characters": {
                **{s: int((total[s] * ~in_vocab).sum()) for s in SPLITS},
                "distinct": int(((total["train"] + total["val"]) * ~in_vocab > 0).sum()),
            },
        },
        "sources": sources,
        "skipped": skipped,
        "options": {k: v for k, v in asdict(opts).items() if k not in ("workers", "force", "progress")},
    }
