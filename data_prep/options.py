"""What `gpt-prepare` can be asked to do, checked before any work starts."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError


@dataclass
class PrepareOptions:
    val_fraction: float = 0.1
    max_vocab: int = 2048
    min_char_count: int = 1
    oov: str = "byte"  # byte fallback, or "unk"
    text_field: str = "text"
    shard_tokens: int = 100_000_000
    workers: int = 0  # 0: all cores
    strict: bool = False
    force: bool = False
    progress: bool = True
    vocab_from: str | None = None  # a run folder, checkpoint or tokenizer file whose vocabulary to use

    def validate(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise DataError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.max_vocab < 2:
            raise DataError(f"--max-vocab must be at least 2, got {self.max_vocab}")
        if self.min_char_count < 1:
            raise DataError(f"--min-char-count must be at least 1, got {self.min_char_count}")
        if self.oov not in ("byte", "unk"):
            raise DataError(f"--oov must be 'byte' or 'unk', got {self.oov!r}")
        if self.shard_tokens < 1:
            raise DataError(f"--shard-tokens must be positive, got {self.shard_tokens}")
        if self.workers < 0:
            raise DataError(f"--workers must be 0 (all cores) or more, got {self.workers}")
