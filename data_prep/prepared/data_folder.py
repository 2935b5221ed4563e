"""A prepared data folder: `meta.json`, `tokenizer.json` and token shards per split.

This module is the one place that reads the folder, and that tells one from any other
folder (`is_prepared_data`); training and sampling go through `load()`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plumbing.errors import check_version, first_line

from ..errors import DataError
from ..tokenize.kinds import Tokenizer, tokenizer_from_dict
from ..tokenize.tokenizer_file import TOKENIZER_FILE
from .shards import open_shard

META_FILE = "meta.json"
DATA_FORMAT = "gpt-prepared-data"
# a folder is written with the lowest version that describes it, so a toolkit from before BPE
# reads character folders and refuses BPE ones with "upgrade the toolkit"
DATA_VERSION = 2  # 2: "tokenizer_kind" and per-split "tokens_per_character" (BPE folders)
DATA_VERSIONS = {"char": 1, "bpe": 2}
SPLITS = ("train", "val")


@dataclass
class PreparedData:
    path: Path
    meta: dict
    tokenizer: Tokenizer

    def tokens_per_character(self, split: str) -> float:
        """Tokens of the split per character of its text, end-of-text tokens included: the
        factor that turns mean nats per token into bits per character (bpc = nats per token
        x this / ln 2), so runs on different tokenizers compare. Recorded in meta.json for
        BPE; a character folder (where it is one per character plus one per document end)
        gives the same ratio from its token and character counts."""
        info = self.meta["splits"][split]
        return float(info.get("tokens_per_character", info["tokens"] / max(info["characters"], 1)))

    def split(self, name: str) -> list[np.ndarray]:
        """The split's token ids: one read-only memory-mapped array per shard."""
        if name not in self.meta["splits"]:
            raise DataError(f"no split {name!r} in {self.path} (it has {', '.join(self.meta['splits'])})")
        info = self.meta["splits"][name]
        arrays = [open_shard(self.path / s) for s in info["shards"]]
        found = sum(len(a) for a in arrays)
        if found != info["tokens"]:
            raise DataError(f"{self.path}: split {name!r} should hold {info['tokens']} tokens but its shards hold "
                            f"{found}")
        return arrays


def is_prepared_data(folder: Path) -> bool:
    """A folder gpt-prepare wrote: its shards are output, never input (an output folder
    inside the input folder must not be read back on the next run)."""
    try:
        with open(folder / META_FILE, "rb") as f:
            return json.loads(f.read(1 << 20)).get("format") == DATA_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def prepared_entries(folder: Path) -> set[str] | None:
    """The names of what gpt-prepare wrote in `folder`: its metadata, its tokenizer and the
    shards its metadata lists (None where the metadata cannot be read)."""
    try:
        with open(folder / META_FILE, "rb") as f:
            meta = json.loads(f.read())
        return {META_FILE, TOKENIZER_FILE, *(name for info in meta["splits"].values() for name in info["shards"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{what} {path} is unreadable or corrupt ({first_line(e)})") from None
    if not isinstance(value, dict):
        raise DataError(f"{what} {path} is corrupt (not a JSON object)")
    return value


def looks_like_text(path: Path) -> bool:
    """Whether a file's first bytes read as UTF-8 text with no NUL (a character cut in two at
    the end of the sample is fine)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if b"\0" in head:
        return False
    for cut in range(4):
        try:
            head[: len(head) - cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def load(path: str | Path) -> PreparedData:
    """Open a folder written by `gpt-prepare`, validating its format version and shards."""
    path = Path(path)
    if path.is_file():
        kind = "a text file" if looks_like_text(path) else "a file"
        raise DataError(f"{path} is {kind}, not a data folder; prepare it first with: gpt-prepare {path} --out "
                        f"{path.stem}-data (then give {path.stem}-data here)")
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist (run gpt-prepare first)")
    if not (path / META_FILE).exists():
        raise DataError(f"{path} is not a prepared data folder: it has no {META_FILE} (run gpt-prepare first)")
    meta = read_json(path / META_FILE, "data metadata")
    if meta.get("format") != DATA_FORMAT:
        raise DataError(f"{path / META_FILE} is not a gpt-prepare metadata file")
    check_version(meta.get("version"), DATA_VERSION, f"data folder {path}", DataError)
    check_complete(meta, path / META_FILE)
    tokenizer = tokenizer_from_dict(read_json(path / TOKENIZER_FILE, "tokenizer"))
    check_tokenizer_matches(meta, tokenizer, path)
    return PreparedData(path=path, meta=meta, tokenizer=tokenizer)


def check_tokenizer_matches(meta: dict, tokenizer: Tokenizer, path: Path) -> None:
    """The tokenizer file is the one the shards were encoded with (a file replaced or edited
    by hand would decode them into other text, or hold fewer ids than they use)."""
    kind = meta.get("tokenizer_kind", "char")
    again = f"prepare the data again (gpt-prepare ... --out {path} --force)"
    if tokenizer.kind != kind:
        raise DataError(f"{path / TOKENIZER_FILE} is a {tokenizer.kind} tokenizer but {path / META_FILE} says the "
                        f"shards were encoded with a {kind} one; {again}")
    if isinstance(meta.get("vocab_size"), int) and meta["vocab_size"] != len(tokenizer):
        raise DataError(f"{path / TOKENIZER_FILE} has {len(tokenizer)} tokens but {path / META_FILE} says "
                        f"{meta['vocab_size']}: the tokenizer file no longer matches the shards; {again}")


SPLIT_KEYS = {"tokens": int, "characters": int, "shards": list}


def check_complete(meta: dict, where: Path) -> None:
    """What training and evaluation read from meta.json is there and of the right kind (a
    file edited by hand, or cut short, fails here in one line rather than deep inside)."""
    splits = meta.get("splits")
    problem = None if isinstance(splits, dict) else "no 'splits'"
    for name in SPLITS:
        if problem:
            break
        info = splits.get(name)
        if not isinstance(info, dict):
            problem = f"no split {name!r}"
            continue
        bad = [k for k, kind in SPLIT_KEYS.items() if not isinstance(info.get(k), kind)]
        if "shards" not in bad and not all(isinstance(s, str) for s in info["shards"]):
            bad.append("shards")
        if bad:
            problem = f"split {name!r} lacks a valid {', '.join(repr(k) for k in bad)}"
    if problem:
        raise DataError(f"{where} is incomplete ({problem}); prepare the data again with gpt-prepare")
