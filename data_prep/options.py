"""What `gpt-prepare` can be asked to do, checked before any work starts."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import DataError

TOKENIZERS = ("char", "bpe")
BPE_SPECIALS = 1  # <|endoftext|>
BPE_BASE = 256 + BPE_SPECIALS  # a byte-level BPE's tokens before any merge
WORKERS_PER_CORE = 4  # --workers beyond this many per core is refused (a typo more likely than a wish)
# options that only a character vocabulary has, and that only a BPE has: left out of a
# folder's meta.json where they do not apply (so character folders' meta.json is as before)
CHAR_ONLY = ("max_vocab", "min_char_count", "oov")
BPE_ONLY = ("tokenizer", "vocab_size")


@dataclass
class PrepareOptions:
    val_fraction: float = 0.1
    max_vocab: int = 2048
    min_char_count: int = 1
    # characters outside the vocabulary: "byte" (byte fallback) or "unk" (one unknown token),
    # kept whether or not this corpus needs them, so new text can be encoded later
    # (--vocab-from, sampling); None: byte fallback only where some character needs it
    oov: str | None = None
    text_field: str = "text"
    shard_tokens: int = 100_000_000
    workers: int = 0  # 0: all cores
    strict: bool = False
    force: bool = False
    progress: bool = True
    # a run folder, checkpoint, prepared data folder or tokenizer file whose vocabulary to use
    vocab_from: str | None = None
    tokenizer: str = "char"  # "char": a character vocabulary; "bpe": a byte-level BPE learned on train
    vocab_size: int | None = None  # a BPE's tokens, special and byte tokens included

    def validate(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise DataError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.vocab_from is not None and (self.tokenizer != "char" or self.vocab_size is not None):
            raise DataError("--vocab-from uses the base's tokenizer as it is, character or BPE; --tokenizer and "
                            "--vocab-size cannot change it")
        if self.tokenizer == "char" and self.vocab_size is not None:
            raise DataError("--vocab-size is for --tokenizer bpe; a character vocabulary is sized by --max-vocab")
        if self.tokenizer == "bpe":
            if self.vocab_size is None:
                raise DataError("--tokenizer bpe needs --vocab-size N (the tokens to learn, the 256 byte tokens and "
                                "<|endoftext|> included)")
            if self.vocab_size <= BPE_BASE:
                raise DataError(f"--vocab-size {self.vocab_size} is too small for a byte-level BPE: its 256 byte "
                                f"tokens and <|endoftext|> take {BPE_BASE}; give at least {BPE_BASE + 1} to learn "
                                "any merge")
        if not 0 < self.val_fraction < 1:
            raise DataError(f"--val-fraction must be more than 0 and less than 1 (both splits need text), "
                            f"got {self.val_fraction}")
        if self.max_vocab < 2:
            raise DataError(f"--max-vocab must be at least 2 (the end-of-text token and one character), "
                            f"got {self.max_vocab}")
        if self.min_char_count < 1:
            raise DataError(f"--min-char-count must be at least 1, got {self.min_char_count}")
        if self.oov not in (None, "byte", "unk"):
            raise DataError(f"--oov must be 'byte' or 'unk', got {self.oov!r}")
        if self.shard_tokens < 1:
            raise DataError(f"--shard-tokens must be positive, got {self.shard_tokens}")
        if self.workers < 0:
            raise DataError(f"--workers must be 0 (all cores) or more, got {self.workers}")
        cores = os.cpu_count() or 1
        if self.workers > WORKERS_PER_CORE * cores:  # each is a process of its own, tens of MB
            raise DataError(f"--workers {self.workers} is more than {WORKERS_PER_CORE} per core of this machine "
                            f"({cores} cores): its work is computing, which more workers than cores do not speed "
                            f"up; give at most {WORKERS_PER_CORE * cores} (0 uses one per core)")
