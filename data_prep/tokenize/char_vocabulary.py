"""A character vocabulary from the corpus's character counts (or a base's, checked against
them), and the character tokenizer built on it."""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..options import PrepareOptions
from .char import N_CODEPOINTS, CharTokenizer, Totals, build_vocab


def build_tokenizer(total: Totals, opts: PrepareOptions,
                    base: CharTokenizer | None = None) -> tuple[CharTokenizer, np.ndarray]:
    """The tokenizer, and which code points its vocabulary holds. The vocabulary comes from
    the training counts (`total`: split -> dense counts); byte tokens only if some character
    needs them (or --oov asks for a fallback), so a clean corpus keeps a tiny vocabulary.
    With a `base` (--vocab-from) it is the base's, unchanged."""
    if base is not None:
        return base, base_vocabulary_fits(base, total)
    seen = total.seen
    train_cps, val_cps = (seen[total[s][seen] > 0] for s in ("train", "val"))
    val_only = bool((total["train"][val_cps] == 0).any())
    asked = opts.oov is not None  # a fallback asked for is kept even where this corpus needs none
    oov = opts.oov or "byte"
    vocab = build_vocab(train_cps, total["train"][train_cps], max_vocab=opts.max_vocab, min_count=opts.min_char_count,
                        oov=oov, others_outside=val_only or asked)
    in_vocab = np.zeros(N_CODEPOINTS, bool)
    in_vocab[[ord(c) for c in vocab]] = True
    outside = not in_vocab[seen].all()
    return CharTokenizer(chars=vocab, oov=oov if outside or asked else "error"), in_vocab


def base_vocabulary_fits(base: CharTokenizer, total: Totals) -> np.ndarray:
    """Which code points the base vocabulary holds; a base without fallback (its own corpus
    was fully covered) cannot encode new characters, and that is said up front."""
    in_vocab = np.zeros(N_CODEPOINTS, bool)
    in_vocab[[ord(c) for c in base.chars]] = True
    seen = total.seen
    outside = seen[~in_vocab[seen]]
    if len(outside) and base.oov == "error":
        shown = " ".join(f"{chr(c)!r} (U+{c:04X})" for c in outside[:10].tolist())
        shown += " ..." if len(outside) > 10 else ""
        raise DataError(
            f"the base vocabulary has no byte fallback or unknown token (its corpus needed none), and the new text has "
            f"{len(outside)} character(s) outside it: {shown}; a base prepared with --oov byte (or --oov unk) keeps one"
        )
    return in_vocab
