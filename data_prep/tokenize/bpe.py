"""Byte-level BPE tokenizer: the runtime counterpart of `CharTokenizer`, with the same
interface (encode, decode, eot_id, len, to_json / from_json, fingerprint, incremental
decoding), for data prepared with `gpt-prepare --tokenizer bpe`.

Encoding is the `tokenizers` library's, from the tokenizer file itself, so the ids are the
ones `tokenizers.Tokenizer.from_file` gives; with `encode_special_tokens` on, so a literal
`<|endoftext|>` in the text is text, as in the data pipeline. Decoding is ours: every
token's bytes are known from the file (`tokenizer_file.byte_level_alphabet`), so decoding is
a join of bytes, and a token that ends in the middle of a UTF-8 character simply leaves the
incremental decoder holding the bytes that are still incomplete.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import ClassVar, Iterable

import numpy as np

from plumbing.errors import first_line

from ..errors import DataError
from .char import EOT, IncrementalDecoder, smallest_dtype
from .safe_cuts import safe_pieces
from .tokenizer_file import bpe_tokenizer_dict, byte_level_alphabet, read_bpe_tokenizer

SURROGATES = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """Lone surrogates (from `\\ud800` escapes) as U+FFFD, as the data pipeline stores them:
    no UTF-8 text, and so no library string, can hold one."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return SURROGATES.sub("\ufffd", text)


class BpeTokenizer:
    kind: ClassVar[str] = "bpe"
    oov: ClassVar[str] = "byte"  # every character encodes, as its bytes at worst: nothing is outside

    def __init__(self, specials: list[str], tokens: list[str], merges: list[str]):
        if EOT not in specials:
            raise DataError(f"tokenizer file has no {EOT} token")
        self.specials, self.tokens, self.merges = list(specials), list(tokens), list(merges)
        self.eot_id = self.specials.index(EOT)
        unbyte = {c: b for b, c in byte_level_alphabet().items()}
        self._pieces = [s.encode() for s in self.specials] + [bytes(unbyte[c] for c in t) for t in self.tokens]
        self._library = None  # built on first use: loading the file into the library costs milliseconds

    # -- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pieces)

    @property
    def dtype(self) -> np.dtype:
        return smallest_dtype(len(self))

    # -- encoding ------------------------------------------------------------------------
    @property
    def library(self):
        if self._library is None:
            from tokenizers import Tokenizer

            try:
                self._library = Tokenizer.from_str(json.dumps(self.to_dict()))
            except Exception as e:  # the library's own refusal, of a file that passed our checks
                raise DataError(f"the tokenizers library cannot load this tokenizer file ({first_line(e)})") from None
            self._library.encode_special_tokens = True
        return self._library

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's ids (int32), encoded in parallel by the library."""
        lib = self.library
        encode = getattr(lib, "encode_batch_fast", lib.encode_batch)  # fast: without character offsets
        encoded = encode([without_surrogates(t) for t in texts], add_special_tokens=False)
        return [np.array(e.ids, np.int32) for e in encoded]

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of `text` as int32, encoded in pieces cut where the ids do not change (`safe_cuts`)."""
        ids = self.encode_batch(list(safe_pieces([text])))
        return np.concatenate(ids) if ids else np.zeros(0, np.int32)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    # -- decoding ------------------------------------------------------------------------
    def piece(self, token_id: int) -> bytes:
        return self._pieces[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self._pieces[int(i)] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", "replace")

    def incremental_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self)

    # -- storage -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return bpe_tokenizer_dict(self.specials, self.tokens, self.merges)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> "BpeTokenizer":
        try:
            return cls(*read_bpe_tokenizer(d))
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # a field missing or of the wrong type
            raise DataError(f"tokenizer JSON is malformed ({type(e).__name__}: {first_line(e)})") from None

    @classmethod
    def from_json(cls, text: str) -> "BpeTokenizer":
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise DataError(f"tokenizer JSON is malformed ({first_line(e)})") from None

    def identity(self) -> dict:
        return {"kind": self.kind, "special_tokens": self.specials, "tokens": self.tokens, "merges": self.merges}

    def fingerprint(self) -> str:
        """A short hash that tells two vocabularies apart (checkpoints record it)."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
