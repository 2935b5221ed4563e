"""The tokenizer file: a vocabulary written as a Hugging Face `tokenizers` JSON, of one of
two kinds (`file_kind`): a character vocabulary, or a byte-level BPE (`bpe_tokenizer_dict`,
below the character part).

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

from ..errors import DataError

TOKENIZER_FILE = "tokenizer.json"  # its name in every data folder, and beside every run's checkpoints
HF_FORMAT_VERSION = "1.0"
UNK = "<|unk|>"
DECODER = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}


def byte_token(b: int) -> str:
    return f"<0x{b:02X}>"


def is_hf_tokenizer(d: dict) -> bool:
    """A Hugging Face tokenizer file (else our first format, `{"kind": "char", ...}`)."""
    return isinstance(d, dict) and isinstance(d.get("model"), dict)


def file_kind(d: dict) -> str:
    """"bpe" for a byte-level BPE file, else "char" (a character vocabulary in either format,
    or something that is neither, which the character reader then refuses by name). The
    pre-tokenizer decides, not the merges: a BPE that learned no merge is still byte-level."""
    pre = d.get("pre_tokenizer") if is_hf_tokenizer(d) else None
    return "bpe" if isinstance(pre, dict) and pre.get("type") == "ByteLevel" else "char"


def char_tokenizer_dict(specials: list[str], chars: list[str], oov: str) -> dict:
    """The library's JSON for special tokens, then characters, then (oov "byte") byte tokens."""
    tokens = [*specials, *chars, *(byte_token(b) for b in range(256) if oov == "byte")]
    return hf_bpe_file(specials, tokens, [], pre_tokenizer=None, decoder=DECODER,
                       unk_token=UNK if oov == "unk" else None, byte_fallback=oov == "byte")


def hf_bpe_file(specials: list[str], vocab: list[str], merges: list[str], pre_tokenizer: dict | None, decoder: dict,
                unk_token: str | None = None, byte_fallback: bool = False) -> dict:
    """A `tokenizers` file of a BPE model over `vocab` (ids in list order, the special tokens
    first): what the character vocabulary (no merges) and the byte-level BPE share."""
    return {
        "version": HF_FORMAT_VERSION,
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True}
            for i, s in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": decoder,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk_token,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": byte_fallback,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(vocab)},
            "merges": list(merges),
        },
    }


def vocabulary_in_id_order(d: dict) -> tuple[list[str], list[str]]:
    """(every token in id order, the special tokens) of a tokenizer file, checked: ids are
    0..N-1, each once, and the special tokens hold the first ids."""
    vocab = d["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise DataError("tokenizer file is inconsistent: its token ids are not 0..N-1, each once")
    added = sorted(d.get("added_tokens") or [], key=lambda a: a["id"])
    specials = [a["content"] for a in added]
    if [a["id"] for a in added] != list(range(len(added))) or tokens[: len(specials)] != specials:
        raise DataError("tokenizer file's special tokens are not the first ids of its vocabulary, where this toolkit's "
                        "tokenizers number them")
    return tokens, specials


def read_char_tokenizer(d: dict) -> tuple[list[str], list[str], str]:
    """(special tokens, characters, oov mode) of a character tokenizer file; anything that is
    not one (edited by hand, or another kind of model) is a DataError naming what is wrong."""
    model = d["model"]
    if model.get("type") != "BPE" or model.get("merges"):
        raise DataError(f"tokenizer file holds a {model.get('type')} model with merges, not a character vocabulary")
    if d.get("normalizer") or d.get("pre_tokenizer"):
        raise DataError("tokenizer file has a normalizer or pre-tokenizer; a character vocabulary has neither")
    tokens, specials = vocabulary_in_id_order(d)
    byte_fallback, unk = bool(model.get("byte_fallback")), model.get("unk_token")
    if byte_fallback and unk is not None:
        raise DataError("tokenizer file has both byte fallback and an unknown token")
    oov = "byte" if byte_fallback else "unk" if unk is not None else "error"
    if oov == "unk" and unk != UNK:
        raise DataError(f"tokenizer file's unknown token is {unk!r}, not {UNK!r}")
    chars = tokens[len(specials) : len(tokens) - (256 if byte_fallback else 0)]
    if byte_fallback and tokens[len(tokens) - 256 :] != [byte_token(b) for b in range(256)]:
        raise DataError("tokenizer file is inconsistent: byte fallback needs the 256 byte tokens <0x00>..<0xFF> last, "
                        "in order")
    return specials, chars, oov


# -- byte-level BPE ------------------------------------------------------------------------
# GPT-2's convention, which the library's ByteLevel pre-tokenizer and decoder follow: text is
# split into words by a regular expression, each word's UTF-8 bytes are written as printable
# characters (one per byte, below), and BPE merges those. No normalizer: the text reaches
# the model as it is. The JSON is written here, as for characters, so the same merges always
# give the same bytes; merges are "a b" strings, which every library version reads (a
# byte-level token never holds a space: the space byte is written "Ġ").
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def byte_level_alphabet() -> dict[int, str]:
    """Byte -> the printable character that stands for it in byte-level tokens (GPT-2's
    table: printable Latin-1 bytes stand for themselves, the rest are moved above U+00FF)."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


def bpe_tokenizer_dict(specials: list[str], tokens: list[str], merges: list[str]) -> dict:
    """The library's JSON for special tokens (ids 0..k-1), then `tokens` (byte-level strings,
    the 256 single bytes among them), with `merges` ("a b", in the order they were learned)."""
    # copies of BYTE_LEVEL: a caller may edit what it is given
    return hf_bpe_file(specials, [*specials, *tokens], merges, pre_tokenizer=dict(BYTE_LEVEL), decoder=dict(BYTE_LEVEL))


def read_bpe_tokenizer(d: dict) -> tuple[list[str], list[str], list[str]]:
    """(special tokens, other tokens in id order, merges as "a b") of a byte-level BPE file;
    a file edited by hand into something our shards could not have come from is a DataError
    naming what is wrong."""
    model = d["model"]
    if model.get("type") != "BPE" or d.get("normalizer") or d.get("decoder", {}).get("type") != "ByteLevel":
        raise DataError("tokenizer file is not a byte-level BPE: it needs a BPE model, no normalizer and the ByteLevel "
                        "decoder")
    if {k: d["pre_tokenizer"].get(k) for k in BYTE_LEVEL} != BYTE_LEVEL:
        raise DataError(f"tokenizer file's ByteLevel pre-tokenizer has other settings than {BYTE_LEVEL}, "
                        "which its ids were made with")
    affixes = model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")
    if model.get("unk_token") is not None or model.get("byte_fallback") or affixes:
        raise DataError("tokenizer file is inconsistent: a byte-level BPE has no unknown token, byte fallback or word "
                        "affixes")
    # a file another tool wrote may set what changes the ids our encoder gives (it applies every
    # merge, every time) or mark an added token as text to match: refused, never read otherwise
    if model.get("dropout") or model.get("ignore_merges"):
        raise DataError("tokenizer file's BPE has dropout or ignore_merges set, which give other ids than applying its "
                        "merges, as this toolkit's encoder does")
    plain = [a.get("content") for a in d.get("added_tokens") or [] if not a.get("special", True)]
    if plain:
        raise DataError(f"tokenizer file adds tokens that are not special ({', '.join(map(repr, plain[:3]))}); this "
                        "toolkit's vocabulary has special tokens only beside its merges")
    tokens, specials = vocabulary_in_id_order(d)
    rest = tokens[len(specials) :]
    alphabet = set(byte_level_alphabet().values())
    if not alphabet <= set(rest):
        raise DataError("tokenizer file is inconsistent: a byte-level BPE needs all 256 byte tokens")
    stray = next((t for t in rest if not t or not set(t) <= alphabet), None)
    if stray is not None:
        raise DataError(f"tokenizer file is inconsistent: token {stray!r} is not made of byte-level characters")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = model["vocab"]
    for m in merges:
        a, _, b = m.partition(" ")
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise DataError(f"tokenizer file is inconsistent: merge {m!r} joins tokens that are not in its vocabulary")
    return specials, rest, merges
