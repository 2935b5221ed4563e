"""The two kinds of tokenizer (characters, byte-level BPE) and a tokenizer file's content read
into the right one: the one place that turns a tokenizer file (from a data folder, a run
folder, a checkpoint or an export) into a tokenizer, so every command accepts both kinds and
the files written before BPE existed."""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Union

from plumbing.errors import first_line

from ..errors import DataError
from .bpe import BpeTokenizer
from .char import CharTokenizer
from .tokenizer_file import file_kind

Tokenizer = Union[CharTokenizer, BpeTokenizer]
KINDS = {"char": CharTokenizer, "bpe": BpeTokenizer}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """The tokenizer a file's content describes, of the kind the file holds (see file_kind)."""
    if not isinstance(d, dict):
        raise DataError(f"tokenizer JSON is malformed (a {type(d).__name__}, not an object)")
    return KINDS[file_kind(d)].from_dict(d)


def tokenizer_from_json(text: str) -> Tokenizer:
    try:
        d = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"tokenizer JSON is malformed ({first_line(e)})") from None
    return tokenizer_from_dict(d)


@lru_cache(maxsize=1)
def worker_tokenizer(text: str) -> Tokenizer:
    """`tokenizer_from_json`, once per worker process: jobs carry the tokenizer as its JSON
    (small to hand over), and a worker reads it back for its first job only."""
    return tokenizer_from_json(text)
