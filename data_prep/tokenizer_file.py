"""The tokenizer file: a character vocabulary written as a Hugging Face `tokenizers` JSON.

A character vocabulary with byte fallback is a model the library already has: a BPE with
no merges, whose vocabulary is the special tokens, the characters and the 256 byte tokens
named `<0x00>`..`<0xFF>` (the library's convention), with `byte_fallback` on. No
normalizer and no pre-tokenizer, so every character (spaces, `\\r\\n`, tabs, NUL, code points
above U+FFFF) reaches the model as it is; the decoder turns byte tokens back into bytes
and fuses them. `tokenizers.Tokenizer.from_file(path)` (and transformers'
`PreTrainedTokenizerFast(tokenizer_file=path)`) load it with no code of ours, and its ids
are ours, because the token -> id map is written out explicitly.

The library refuses unknown top-level keys, so nothing of ours is stored beside its fields:
everything is read back from them. Special tokens are the added tokens (`special: true`,
ids 0..k-1); the out-of-vocabulary mode is `byte_fallback` ("byte"), `unk_token` ("unk")
or neither ("error": a corpus the vocabulary covers fully). In "error" mode the library
silently drops a character it does not know; our encoder stays the authority and raises.

One convention differs, by the library's design: its `encode` reads the literal text
`<|endoftext|>` as the special token, where the data pipeline encodes text as characters
(so a document cannot forge a document boundary). Setting the library tokenizer's
`encode_special_tokens = True` gives exactly our ids on every text.

The JSON is written here, not by the library, so the same vocabulary always gives the same
bytes whatever the installed library's version.
"""
from __future__ import annotations

import re

from .errors import DataError

HF_FORMAT_VERSION = "1.0"
UNK = "<|unk|>"
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
DECODER = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}


def byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


def is_hf_tokenizer(d: dict) -> bool:
    """A Hugging Face tokenizer file (else our first format, `{"kind": "char", ...}`)."""
    return isinstance(d, dict) and isinstance(d.get("model"), dict)


def char_tokenizer_dict(specials: list[str], chars: list[str], oov: str) -> dict:
    """The library's JSON for special tokens, then characters, then (oov "byte") byte tokens."""
    tokens = [*specials, *chars, *(byte_token(b) for b in range(256) if oov == "byte")]
    return {
        "version": HF_FORMAT_VERSION,
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
            for i, s in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": DECODER,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": UNK if oov == "unk" else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": oov == "byte",
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [],
        },
    }


def read_char_tokenizer(d: dict) -> tuple[list[str], list[str], str]:
    """(special tokens, characters, oov mode) of a character tokenizer file; anything that is
    not one (edited by hand, or another kind of model) is a DataError naming what is wrong."""
    model = d["model"]
    if model.get("type") != "BPE" or model.get("merges"):
        raise DataError(f"tokenizer file holds a {model.get('type')} model with merges, not a character vocabulary")
    if d.get("normalizer") or d.get("pre_tokenizer"):
        raise DataError("tokenizer file has a normalizer or pre-tokenizer; a character vocabulary has neither")
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise DataError("tokenizer file is inconsistent: its token ids are not 0..N-1, each once")
    added = sorted(d.get("added_tokens") or [], key=lambda a: a["id"])
    specials = [a["content"] for a in added]
    if [a["id"] for a in added] != list(range(len(added))) or tokens[: len(specials)] != specials:
        raise DataError("tokenizer file is inconsistent: its special tokens are not the first ids of its vocabulary")
    byte_fallback, unk = bool(model.get("byte_fallback")), model.get("unk_token")
    if byte_fallback and unk is not None:
        raise DataError("tokenizer file has both byte fallback and an unknown token")
    oov = "byte" if byte_fallback else "unk" if unk is not None else "error"
    if oov == "unk" and unk != UNK:
        raise DataError(f"tokenizer file's unknown token is {unk!r}, not {UNK!r}")
    chars = tokens[len(specials) : len(tokens) - (256 if byte_fallback else 0)]
    if byte_fallback and tokens[len(tokens) - 256 :] != [byte_token(b) for b in range(256)]:
        raise DataError("tokenizer file is inconsistent: byte fallback needs the 256 byte tokens <0x00>..<0xFF> last, in order")
    return specials, chars, oov
