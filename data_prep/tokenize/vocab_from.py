"""`--vocab-from`: the tokenizer of a model that already exists, so new text can be encoded
for fine-tuning it. The base is named by a run folder, a prepared data folder, a
checkpoint or a tokenizer file; the tokenizer comes back exactly as the base has it, a
character vocabulary or a BPE, so the new data's fingerprint is the base's and
`gpt-train --init-from` accepts it.

A checkpoint is never opened: that takes torch, which gpt-prepare does without. Every
checkpoint gpt-train writes sits in a run folder beside `tokenizer.json`, the tokenizer the
checkpoint holds, and that file is read instead.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

from plumbing.errors import display_name, first_line

from ..errors import DataError
from .kinds import Tokenizer, tokenizer_from_json
from .tokenizer_file import TOKENIZER_FILE  # in every data folder, and beside every run's checkpoints

CHECKPOINTS = ("best.pt", "latest.pt")


def load_base_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of the base at `path`; anything missing or damaged is one DataError."""
    path = Path(path)
    name = display_name(path)
    if path.is_dir():
        if (path / TOKENIZER_FILE).is_file():
            return _from_tokenizer_file(path / TOKENIZER_FILE)
        for ckpt in CHECKPOINTS:
            if (path / ckpt).is_file():
                return _beside_checkpoint(path / ckpt, name)
        raise DataError(f"--vocab-from {name}: the folder has no {TOKENIZER_FILE} and no checkpoint "
                        "(name a run folder, a checkpoint or a tokenizer file)")
    if not path.is_file():
        raise DataError(f"--vocab-from {name}: no such file or folder")
    with open(path, "rb") as f:
        start = f.read(64).lstrip()
    # a tokenizer file is JSON; anything else can only be a checkpoint (a zip archive)
    if start.startswith(b"{"):
        return _from_tokenizer_file(path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"--vocab-from {name} is corrupt or truncated, or not a checkpoint at all "
                        "(it is neither a complete torch archive nor a tokenizer file)")
    return _beside_checkpoint(path, name)


def _beside_checkpoint(checkpoint: Path, name: str) -> Tokenizer:
    """The tokenizer of a checkpoint, from the tokenizer file of its run folder."""
    tokenizer_file = checkpoint.parent / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise DataError(f"--vocab-from {name}: no {TOKENIZER_FILE} beside the checkpoint {checkpoint.name}, and "
                        f"gpt-prepare reads a checkpoint's vocabulary from there; name the run folder, its "
                        f"{TOKENIZER_FILE}, or the data folder the model was trained on")
    return _from_tokenizer_file(tokenizer_file)


def _from_tokenizer_file(path: Path) -> Tokenizer:
    try:
        text = path.read_text(encoding="utf-8")
        return tokenizer_from_json(text)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--vocab-from {display_name(path)}: unreadable ({first_line(e)})") from None
    except DataError as e:
        raise DataError(f"--vocab-from {display_name(path)}: {e}") from None
