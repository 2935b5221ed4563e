"""Character-level tokenizer with byte fallback, stored as JSON.

Token ids are laid out as: special tokens, then the vocabulary's characters (most frequent
first), then, when byte fallback is on, the 256 UTF-8 byte tokens. A character outside the
vocabulary becomes the byte tokens of its UTF-8 encoding, so no text is ever lost; with
`oov="unk"` it becomes the single unknown token instead (lossy, chosen by the user).

Encoding is vectorised: the text becomes an array of code points (through UTF-32) and a
lookup table maps them to ids, so there is no Python loop over characters.

The file it is stored in is a Hugging Face `tokenizers` JSON that gives the same ids
(`tokenizer_file`); the first format, `{"kind": "char", "version": 1, ...}`, still loads,
so data folders and checkpoints written before keep working.
"""
from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Sequence

import numpy as np

from plumbing.errors import check_version, first_line

from ..errors import DataError
from .id_table import IdTable
from .tokenizer_file import UNK, char_tokenizer_dict, is_hf_tokenizer, read_char_tokenizer

TOKENIZER_KIND = "char"
TOKENIZER_VERSION = 1
EOT = "<|endoftext|>"
OOV_MODES = ("byte", "unk", "error")
N_CODEPOINTS = 0x110000  # all of Unicode: the length of a dense table of counts per code point


NUMPY_STR_MAX = (1 << 29) - 1  # characters numpy stores as one item at most (2 GB)


def codepoints(text: str) -> np.ndarray:
    """The text's code points as a uint32 array (surrogates pass through unchanged). ASCII
    goes through the UTF-32 codec, 0.08 ns a character; any wider text through numpy's own
    copy of a str, which widens each character as it is stored: 0.16 ns a character where
    the codec took 0.68 for text that holds a character past U+00FF, and 0.32 for one past
    U+FFFF (256 K characters, 2-core Intel Xeon). Text of Latin-1 beyond ASCII but nothing
    wider, which the codec also took at 0.08, is rare in a batch of 256 K characters (one
    curly quote is past U+00FF), and only its kind would tell it apart in less than a pass."""
    if text.isascii() or len(text) > NUMPY_STR_MAX:  # isascii: known without a look at the characters
        # little-endian bytes: a copy in the machine's own order only where that differs
        return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.uint32, copy=False)
    return np.array(text).reshape(1).view(np.uint32)  # a str of n characters: one n-character item



def present(total: dict) -> np.ndarray:
    """The code points counted in any split of `total` (split -> dense counts, of the same
    length), ascending. What is asked of the counts is then asked of these few: an
    operation on a whole dense array makes another as long (up to 1.1 M entries, 9 MB),
    which fresh from the system costs more than a lookup at a few hundred places. (Not
    np.unique: in numpy 2 its first call imports numpy.ma, 20 ms of serial work.)"""
    cps = np.sort(np.concatenate([np.flatnonzero(n) for n in total.values()]))
    return cps[np.concatenate(([True], cps[1:] != cps[:-1]))] if len(cps) else cps


class Totals(dict):
    """split -> dense counts of each code point (of one length, up to the largest code point
    counted), and `seen`: the code points counted in any split, found once. What is asked of
    the counts after pass 1 (the vocabulary, the coverage, the text's bytes) is asked at these
    few hundred places: a search of the dense arrays is a pass over up to 1.1 M entries (2 ms
    each), and they were searched a dozen times between the passes, the workers waiting."""

    def __init__(self, dense: dict):
        super().__init__(dense)
        self.seen = present(dense)


def utf8_length(cps: np.ndarray) -> np.ndarray:
    """Bytes each code point takes in UTF-8."""
    return 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)


def smallest_dtype(n_tokens: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_tokens <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    raise DataError(f"a vocabulary of {n_tokens} tokens is too large")


@dataclass
class CharTokenizer:
    kind: ClassVar[str] = "char"
    chars: list[str]
    oov: str = "byte"  # byte | unk | error: what happens to a character outside `chars`
    specials: list[str] = field(default_factory=lambda: [EOT])

    def __post_init__(self) -> None:
        if self.oov not in OOV_MODES:
            raise DataError(f"unknown out-of-vocabulary mode {self.oov!r} (choose from {', '.join(OOV_MODES)})")
        if self.oov == "unk" and UNK not in self.specials:
            self.specials = [*self.specials, UNK]
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise DataError("tokenizer vocabulary must be distinct single characters")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in self.chars):
            # no UTF-8 file can hold one; the data pipeline replaces them with U+FFFD
            raise DataError("tokenizer vocabulary cannot hold lone surrogates")
        self.char_offset = len(self.specials)
        self.byte_offset = self.char_offset + len(self.chars) if self.oov == "byte" else None
        self.eot_id = self.specials.index(EOT)
        self.unk_id = self.specials.index(UNK) if UNK in self.specials else None
        # code point -> id; the last slot is the "outside the table" sentinel (-1)
        cps = np.array([ord(c) for c in self.chars], dtype=np.int64)
        size = int(cps.max()) + 2 if len(cps) else 1
        self._lut = np.full(size, -1, dtype=np.int32)
        self._lut[cps] = np.arange(len(cps), dtype=np.int32) + self.char_offset
        self._luts: dict[np.dtype | None, IdTable] = {}  # the table as int32 (None) and in narrower id types
        self._pieces: list[bytes] | None = None

    # -- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.char_offset + len(self.chars) + (256 if self.oov == "byte" else 0)

    @property
    def dtype(self) -> np.dtype:
        return smallest_dtype(len(self))

    # -- encoding ------------------------------------------------------------------------
    def tokens_per_char(self, cps: np.ndarray) -> np.ndarray:
        """Tokens each of the characters `cps` encodes to: one, or its UTF-8 bytes."""
        inside = self._lut.take(cps, mode="clip") >= 0
        return np.where(inside | (self.oov != "byte"), 1, utf8_length(cps)).astype(np.int64)

    def token_lengths(self, cps: np.ndarray, counts: np.ndarray) -> int:
        """Tokens that characters `cps` occurring `counts` times encode to (for sizing)."""
        return int((self.tokens_per_char(cps) * counts).sum())

    def encode_array(self, text: str, eot_after: Sequence[int] = ()) -> np.ndarray:
        """Encode `text` to an int32 id array; an end-of-text token follows each char offset in `eot_after`."""
        return self.encode_codepoints(codepoints(text), eot_after)

    def _lookup_table(self, dtype: np.dtype | None) -> tuple[IdTable, int]:
        """The code point -> id table in `dtype` (int32 when None) and its "outside" value.
        An unsigned type whose largest value is no id marks outside characters with that
        value, so ids never pass through a wider type."""
        if dtype is None or np.dtype(dtype).kind != "u" or len(self) > np.iinfo(dtype).max:
            if None not in self._luts:
                self._luts[None] = IdTable(self._lut)
            return self._luts[None], -1
        dtype = np.dtype(dtype)
        if dtype not in self._luts:
            self._luts[dtype] = IdTable(self._lut.astype(dtype))  # -1 wraps to the type's largest value
        return self._luts[dtype], int(np.iinfo(dtype).max)

    def encode_codepoints(self, cps: np.ndarray, eot_after: Sequence[int] = (),
                          dtype: np.dtype | None = None) -> np.ndarray:
        """Ids of code points `cps` as int32, or as `dtype` (e.g. a shard's own id type)."""
        lut, outside = self._lookup_table(dtype)
        ids = np.empty(len(cps), lut.dtype)
        lut.into(cps, ids)
        missing = np.flatnonzero(ids == outside)
        eots = np.asarray(eot_after, dtype=np.int64)
        if len(missing) and self.oov == "error":
            bad = sorted({chr(c) for c in cps[missing[:1000]].tolist()})
            shown = " ".join(f"{c!r} (U+{ord(c):04X})" for c in bad[:10])
            raise DataError("characters not in the vocabulary: " + shown)
        if len(missing) and self.oov == "unk":
            ids[missing] = self.unk_id
        elif len(missing):
            # byte fallback: one insertion makes room after each missing character for the
            # rest of its UTF-8 bytes (and places the end-of-text tokens, after those bytes
            # where both fall at one place); then the bytes are written arithmetically
            mc = cps[missing].astype(np.int64)
            ml = utf8_length(mc)
            extra = np.concatenate(([0], np.cumsum(ml - 1)))
            room = np.repeat(missing + 1, ml - 1)
            values = np.zeros(len(room) + len(eots), ids.dtype)
            values[len(room) :] = self.eot_id
            ids = np.insert(ids, np.concatenate((room, eots)), values)
            start = missing + extra[:-1] + np.searchsorted(eots, missing, "right")
            lead_mark = np.array([0, 0x00, 0xC0, 0xE0, 0xF0])[ml]
            ids[start] = (lead_mark | (mc >> (6 * (ml - 1)))) + self.byte_offset
            for k in range(1, 4):
                sel = ml > k
                ids[start[sel] + k] = (0x80 | ((mc[sel] >> (6 * (ml[sel] - 1 - k))) & 0x3F)) + self.byte_offset
            eots = eots[:0]
        if len(eots):
            ids = np.insert(ids, eots, self.eot_id)
        return ids if dtype is None or ids.dtype == dtype else ids.astype(dtype)

    def lookup(self, cps: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
        """The ids of code points `cps` in `dtype`, one each; None where a character is
        outside the vocabulary (whose ids need more than a lookup: `encode_codepoints`)."""
        lut, outside = self._lookup_table(dtype)
        ids = np.empty(len(cps), lut.dtype)
        lut.into(cps, ids)
        if (ids == outside).any():
            return None
        return ids if ids.dtype == dtype else ids.astype(dtype)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    # -- decoding ------------------------------------------------------------------------
    def piece(self, token_id: int) -> bytes:
        if self._pieces is None:
            pieces = [s.encode() for s in self.specials] + [c.encode("utf-8", "surrogatepass") for c in self.chars]
            if self.oov == "byte":
                pieces += [bytes([b]) for b in range(256)]
            self._pieces = pieces
        return self._pieces[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.piece(int(i)) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", "replace")

    def incremental_decoder(self) -> "IncrementalDecoder":
        return IncrementalDecoder(self)

    # -- storage -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The tokenizer file's content: a Hugging Face `tokenizers` JSON (see tokenizer_file)."""
        return char_tokenizer_dict(self.specials, self.chars, self.oov)

    def identity(self) -> dict:
        """What the vocabulary is, in the first file format's terms: the fingerprint hashes
        this, so a vocabulary keeps its fingerprint whichever format stored it and runs
        made before the format changed still accept their data."""
        return {
            "kind": TOKENIZER_KIND,
            "version": TOKENIZER_VERSION,
            "oov": self.oov,
            "special_tokens": self.specials,
            "chars": "".join(self.chars),
            "byte_fallback": self.oov == "byte",
            "vocab_size": len(self),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        """From a tokenizer file's content, in either format."""
        try:
            if is_hf_tokenizer(d):
                specials, chars, oov = read_char_tokenizer(d)
                return cls(chars=chars, oov=oov, specials=specials)
            return cls._from_first_format(d)
        except (KeyError, TypeError, AttributeError, ValueError) as e:  # a field missing or of the wrong type
            raise DataError(f"tokenizer JSON is malformed ({type(e).__name__}: {first_line(e)})") from None

    @classmethod
    def _from_first_format(cls, d: dict) -> "CharTokenizer":
        if not isinstance(d, dict) or d.get("kind") != TOKENIZER_KIND:
            raise DataError(f"not a character tokenizer (kind {d.get('kind') if isinstance(d, dict) else None!r})")
        check_version(d.get("version"), TOKENIZER_VERSION, "the tokenizer", DataError)
        tok = cls(chars=list(d["chars"]), oov=d["oov"], specials=list(d["special_tokens"]))
        if "vocab_size" in d and d["vocab_size"] != len(tok):
            raise DataError(f"tokenizer file is inconsistent: it says {d['vocab_size']} tokens but defines {len(tok)}")
        return tok

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "CharTokenizer":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise DataError(f"tokenizer JSON is malformed ({first_line(e)})") from None
        return cls.from_dict(d)

    def fingerprint(self) -> str:
        """A short hash that tells two vocabularies apart (checkpoints record it)."""
        import hashlib

        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


class IncrementalDecoder:
    """Turns ids into text one id at a time, holding back incomplete UTF-8 sequences (a byte
    token, or a BPE token that ends inside a character): only whole characters come out."""

    def __init__(self, tokenizer):  # any tokenizer with piece(id) -> bytes
        self.tokenizer = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self.tokenizer.piece(token_id))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


def build_vocab(cps: np.ndarray, counts: np.ndarray, *, max_vocab: int, min_count: int, oov: str,
                others_outside: bool = False) -> list[str]:
    """Characters to keep: count >= min_count, most frequent first, ties by code point, so
    that special tokens plus characters (plus 256 byte tokens when they are needed) fit in
    max_vocab. `others_outside`: some text has characters that are not in `cps` at all
    (seen only in val), so fallback tokens are needed whatever is kept. Returns the
    characters in id order."""
    order = np.lexsort((cps, -counts))
    keep = [int(cps[i]) for i in order if counts[i] >= min_count]
    n_special = 1 + (oov == "unk")
    room = max_vocab - n_special
    fallback = oov == "byte" and (len(keep) > room or len(keep) < len(cps) or others_outside)
    if fallback:
        room -= 256
    if room < 1 and fallback:
        raise DataError(f"--max-vocab {max_vocab} leaves no room for characters: the characters left out need the byte "
                        f"fallback, whose 256 byte tokens and the end-of-text token take {256 + n_special}; "
                        f"give at least {257 + n_special}, or --oov unk (one unknown token in their place)")
    if room < 1:
        raise DataError(f"--max-vocab {max_vocab} leaves no room for characters: the special tokens take {n_special}; "
                        f"give at least {n_special + 1}")
    return [chr(c) for c in keep[:room]]
