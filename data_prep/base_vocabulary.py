"""`--vocab-from`: the vocabulary of a model that already exists, so new text can be encoded
for fine-tuning it. The base is named by a run folder, a prepared data folder, a
checkpoint or a tokenizer file; the tokenizer comes back exactly as the base has it, a
character vocabulary or a BPE, so the new data's fingerprint is the base's and
`gpt-train --init-from` accepts it."""
from __future__ import annotations

from pathlib import Path

from .dataset import TOKENIZER_FILE  # beside every run's checkpoints and in every data folder
from .discovery import display_name
from .any_tokenizer import Tokenizer, tokenizer_from_json
from .errors import DataError
from plumbing.errors import UserError, first_line

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
                return _from_checkpoint(path / ckpt)
        raise DataError(f"--vocab-from {name}: the folder has no {TOKENIZER_FILE} and no checkpoint (name a run folder, a checkpoint or a tokenizer file)")
    if not path.is_file():
        raise DataError(f"--vocab-from {name}: no such file or folder")
    with open(path, "rb") as f:
        start = f.read(64).lstrip()
    # a tokenizer file is JSON; anything else can only be a checkpoint (a zip archive)
    return _from_tokenizer_file(path) if start.startswith(b"{") else _from_checkpoint(path)


def _from_tokenizer_file(path: Path) -> Tokenizer:
    try:
        text = path.read_text(encoding="utf-8")
        return tokenizer_from_json(text)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"--vocab-from {display_name(path)}: unreadable ({first_line(e)})") from None
    except DataError as e:
        raise DataError(f"--vocab-from {display_name(path)}: {e}") from None


def _from_checkpoint(path: Path) -> Tokenizer:
    # torch is imported here, only for a checkpoint: data_prep never needs it otherwise
    try:
        from gpt.checkpoint import load_checkpoint
    except ImportError:
        raise DataError(f"--vocab-from {display_name(path)}: reading a checkpoint needs torch and the gpt package; name its run folder's {TOKENIZER_FILE} instead") from None
    try:
        state = load_checkpoint(path)
    except UserError as e:
        raise DataError(f"--vocab-from {first_line(e)}") from None
    if not isinstance(state.get("tokenizer"), str):
        raise DataError(f"--vocab-from {display_name(path)}: the checkpoint holds no tokenizer")
    try:
        return tokenizer_from_json(state["tokenizer"])
    except DataError as e:
        raise DataError(f"--vocab-from {display_name(path)}: {e}") from None
