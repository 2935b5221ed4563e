"""The vocabulary from the corpus's character counts, and the tokenizer built on it."""
from __future__ import annotations

import numpy as np

from .options import PrepareOptions
from .scratch import N_CODEPOINTS, SPLITS
from .tokenizer import CharTokenizer, build_vocab


def summed(unit_counts: list[dict]) -> dict:
    """split -> dense counts over all code points, from units' split -> (code points, counts)."""
    total = {s: np.zeros(N_CODEPOINTS, np.int64) for s in SPLITS}
    for counts in unit_counts:
        for s in SPLITS:
            total[s][counts[s][0]] += counts[s][1]
    return total


def build_tokenizer(total: dict, opts: PrepareOptions) -> tuple[CharTokenizer, np.ndarray]:
    """The tokenizer, and which code points its vocabulary holds. The vocabulary comes from
    the training counts; byte tokens only if some character needs them, so a clean corpus
    keeps a tiny vocabulary."""
    train_cps = np.flatnonzero(total["train"])
    val_only = bool((total["val"] * (total["train"] == 0)).any())
    vocab = build_vocab(train_cps, total["train"][train_cps], max_vocab=opts.max_vocab, min_count=opts.min_char_count, oov=opts.oov, others_outside=val_only)
    in_vocab = np.zeros(N_CODEPOINTS, bool)
    in_vocab[[ord(c) for c in vocab]] = True
    outside = bool(((total["train"] + total["val"]) * ~in_vocab).any())
    return CharTokenizer(chars=vocab, oov=opts.oov if outside else "error"), in_vocab
