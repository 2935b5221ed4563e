"""Learning a byte-level BPE from the training split, with the `tokenizers` library's trainer.

The trainer is fed an iterator over the training split's text, read back from the scratch
files in pieces (`scratch_text.train_texts`): the library counts words as they stream by and
keeps only the counts, so memory follows the number of distinct words, not the corpus. Val
text is never seen, so val bits per character measure text the tokenizer did not learn from.

It runs in a worker process when there are workers: the library's threads then never start
in the main process, which forks the workers (a process forked after the library's threads
have run gets the library's warning and loses its parallelism).
"""
from __future__ import annotations

import json
from typing import Iterator

from tqdm import tqdm

from .bpe import BpeTokenizer
from .errors import DataError
from .options import BPE_BASE
from .scratch import ScratchIndex
from .scratch_text import train_texts
from .tokenizer import EOT
from .tokenizer_file import BYTE_LEVEL


def learn_bpe(scratches: list[ScratchIndex], val_tails: float | None, vocab_size: int, progress_chars: int | None = None) -> BpeTokenizer:
    """A byte-level BPE of `vocab_size` tokens (special and byte tokens included) learned on
    the training split; a corpus that runs out of pairs to merge first is a DataError.
    `progress_chars`: the split's characters, for a progress bar (None: no bar)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    lib = Tokenizer(models.BPE())
    lib.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=BYTE_LEVEL["add_prefix_space"], use_regex=BYTE_LEVEL["use_regex"])
    lib.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bar = tqdm(total=progress_chars, unit="char", unit_scale=True, desc="learning BPE", disable=progress_chars is None, leave=False,
               position=0)  # a worker inherits its parent's bars, whose places it must not keep
    lib.train_from_iterator(counted(train_texts(scratches, val_tails), bar), trainer=trainer)
    bar.close()
    model = json.loads(lib.to_str())["model"]
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    if len(tokens) < vocab_size:
        # an error rather than a smaller vocabulary: the size is the model's shape, and a
        # comparison across sizes would quietly compare something else
        raise DataError(f"--vocab-size {vocab_size} is more than the training split can give: BPE ran out of pairs to merge "
                        f"after {len(tokens) - BPE_BASE} merges ({len(tokens)} tokens, every word of the split then one token); "
                        f"give --vocab-size {len(tokens)} or less, or more text")
    if tokens[0] != EOT:
        raise RuntimeError(f"the BPE trainer put {tokens[0]!r} first, not {EOT}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return BpeTokenizer([EOT], tokens[1:], merges)


def counted(texts: Iterator[str], bar: tqdm) -> Iterator[str]:
    for text in texts:
        bar.update(len(text))
        yield text


class LearnBpe:
    """learn_bpe as a picklable callable for a worker process; the tokenizer comes back as its
    JSON."""

    def __init__(self, val_tails: float | None, vocab_size: int, progress_chars: int | None = None):
        self.val_tails, self.vocab_size, self.progress_chars = val_tails, vocab_size, progress_chars

    def __call__(self, scratches: list[ScratchIndex]) -> str:
        return learn_bpe(scratches, self.val_tails, self.vocab_size, self.progress_chars).to_json()
