"""Learning a byte-level BPE from the training split's text, with the `tokenizers` library's
trainer.

The trainer is fed an iterator over the text, in pieces (gpt-prepare reads them back from
its code point files: `passes.segments.train_texts`): the library counts words as they
stream by and keeps only the counts, so memory follows the number of distinct words, not
the corpus. Val text is never seen, so val bits per character measure text the tokenizer
did not learn from.
"""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from ..errors import DataError
from ..options import BPE_BASE
from ..progress import progress_bar
from .bpe import BpeTokenizer
from .char import EOT
from .tokenizer_file import BYTE_LEVEL


def learn_bpe(texts: Iterable[str], vocab_size: int, progress_chars: int | None = None) -> BpeTokenizer:
    """A byte-level BPE of `vocab_size` tokens (special and byte tokens included) learned on
    `texts`, the training split; a corpus that runs out of pairs to merge first is a
    DataError. `progress_chars`: the split's characters, for a progress bar (None: no bar)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lib = Tokenizer(models.BPE())
    lib.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=BYTE_LEVEL["add_prefix_space"],
                                                 use_regex=BYTE_LEVEL["use_regex"])
    lib.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # a worker inherits its parent's bars, whose places it must not keep
    bar = progress_bar(progress_chars, "char", "learning BPE", False if progress_chars is None else None, position=0)
    lib.train_from_iterator(counted(texts, bar), trainer=trainer)
    bar.close()
    model = json.loads(lib.to_str())["model"]
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    if len(tokens) < vocab_size:
        # an error rather than a smaller vocabulary: the size is the model's shape, and a
        # comparison across sizes would quietly compare something else
        raise DataError(f"--vocab-size {vocab_size} is more than the training split can give: BPE ran out of pairs "
                        f"to merge after {len(tokens) - BPE_BASE} merges ({len(tokens)} tokens, every word of the "
                        f"split then one token); give --vocab-size {len(tokens)} or less, or more text")
    if tokens[0] != EOT:
        raise RuntimeError(f"the BPE trainer put {tokens[0]!r} first, not {EOT}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return BpeTokenizer([EOT], tokens[1:], merges)


def counted(texts: Iterable[str], bar) -> Iterator[str]:
    for text in texts:
        bar.update(len(text))
        yield text
