"""What is scored: text files (read as gpt-prepare reads them) or a prepared split, as a
stream of token ids in the model's own vocabulary, with the characters they stand for.

Text is encoded as the training data was: each document is followed by the end-of-text
token, and the stream starts with one, so the first character is predicted from the same
context as every document's first character in training. Characters outside the
vocabulary are counted (and a few named); they are scored as the tokenizer encodes them
(their UTF-8 byte tokens, or the unknown token), or, with a tokenizer that has no fallback,
left out of the score and counted as left out. A byte-level BPE has every character inside
(as its bytes at worst); its ids depend on where a document is cut, so a document is cut
only where they do not (`data_prep.tokenize.safe_cuts`), and a text scores as gpt-prepare encodes it.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

import data_prep
from data_prep import Tokenizer
from data_prep.prepared.shards import check_in_vocabulary
from data_prep.tokenize.char import codepoints
from data_prep.tokenize.safe_cuts import safe_pieces

from ..store.runs import load_data
from .errors import EvalError

PIECE_TOKENS = 1 << 16  # a split's shards are read this many tokens at a time

Document = tuple[str, Iterator[str]]


@dataclass
class ReadNotes:
    """What reading the text skipped or repaired, for the report."""

    skipped: list[str] = field(default_factory=list)  # "name: reason"
    invalid_utf8: int = 0
    bad_records: int = 0  # JSON or Parquet records without text, as gpt-prepare counts them
    documents: int = 0


def read_documents(paths: list[str], notes: ReadNotes, text_field: str = "text") -> Iterator[Document]:
    """Documents in files, folders and archives, read by gpt-prepare's own code: this is the
    one place evaluation touches `data_prep.read.documents`. Unreadable content (binary files,
    corrupt archives) is skipped with a warning, as gpt-prepare does without --strict."""
    from data_prep.read import documents as sources
    from data_prep.read.inputs import discover

    unreadable = (sources.SourceError, *sources.DECODE_ERRORS)

    read = [0]  # documents of the current source handed on: scored, even where the source fails after them

    def skip(source, e: BaseException) -> None:
        if isinstance(e, OSError) and e.filename and not isinstance(e, EOFError):
            raise e  # a file that cannot be opened at all is the user's to fix
        reason = (str(e) if isinstance(e, sources.SourceError)
                  else f"{source.path}: unreadable ({type(e).__name__}: {e})")
        if read[0]:  # streamed, its first documents are scored already (gpt-prepare drops the whole file)
            reason += f"; read in part: the {read[0]:,} document(s) read before it failed are scored"
        if reason not in notes.skipped:
            notes.skipped.append(reason)
            warnings.warn(f"skipped {reason}")

    def guarded(source, texts: Iterator[str]) -> Iterator[str]:
        # a document's text is read lazily: its failure comes while it is being scored
        try:
            yield from texts
        except unreadable as e:
            skip(source, e)

    for source in discover(paths):
        stats = sources.DecodeStats()
        read[0] = 0
        try:
            for doc in sources.file_documents(source, text_field, stats, strict=False):
                read[0] += 1
                yield doc.name, guarded(source, doc.chunks)
        except unreadable as e:
            skip(source, e)
        notes.skipped += stats.skipped
        notes.invalid_utf8 += stats.invalid_utf8
        notes.bad_records += stats.bad_records


@dataclass
class TokenStream:
    """A stream of token ids and what it stands for. `chunks()` may be iterated once; the
    counts are complete when it is exhausted."""

    description: str
    characters: int = 0  # characters whose tokens are scored
    oov_characters: int | None = 0  # characters outside the vocabulary (None: not known)
    oov_examples: Counter = field(default_factory=Counter)
    oov_left_out: bool = False  # the tokenizer has no fallback: such characters were not scored
    notes: ReadNotes = field(default_factory=ReadNotes)
    total_tokens: int | None = None  # tokens to score, when known in advance (a prepared split)

    @property
    def characters_read(self) -> int:
        """Every character of the text, scored or left out."""
        return self.characters + (self.oov_characters if self.oov_left_out else 0)

    def chunks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


class TextStream(TokenStream):
    def __init__(self, paths: list[str], tokenizer: Tokenizer, text_field: str = "text"):
        super().__init__(describe_paths(paths))
        self.paths, self.tokenizer, self.text_field = paths, tokenizer, text_field
        self.inside = None  # a BPE: every character is inside
        if tokenizer.kind == "char":
            vocab = np.array([ord(c) for c in tokenizer.chars], dtype=np.int64)
            # code point -> in the vocabulary; the last slot is False and catches every larger one
            self.inside = np.zeros(int(vocab.max(initial=0)) + 2, dtype=bool)
            self.inside[vocab] = True
            self.oov_left_out = tokenizer.oov == "error"

    def chunks(self) -> Iterator[np.ndarray]:
        eot = np.array([self.tokenizer.eot_id], dtype=np.int64)
        yield eot
        for _name, texts in read_documents(self.paths, self.notes, self.text_field):
            # characters encode alike however the text is cut; a BPE's ids only where safe_pieces cuts
            read = False
            for text in (texts if self.inside is not None else safe_pieces(texts)):
                if text:
                    read = True
                    yield self.encode(text)
            if read:  # as in gpt-prepare, an empty file or a skipped one (binary) is no document
                self.notes.documents += 1
                yield eot

    def encode(self, text: str) -> np.ndarray:
        if self.inside is None:
            self.characters += len(text)
            return self.tokenizer.encode_array(text).astype(np.int64)
        cps = codepoints(text)
        inside = self.inside.take(cps, mode="clip")
        outside = cps[~inside]
        if len(outside):
            self.oov_characters += len(outside)
            chars, counts = np.unique(outside, return_counts=True)
            self.oov_examples.update({chr(c): int(n) for c, n in zip(chars.tolist(), counts.tolist())})
            if self.oov_left_out:
                cps = cps[inside]
        self.characters += len(cps)
        return self.tokenizer.encode_codepoints(cps).astype(np.int64)


class SplitStream(TokenStream):
    """A split of a prepared data folder: its shards in order make up the original stream
    (documents, each followed by the end-of-text token)."""

    def __init__(self, data: data_prep.PreparedData, name: str):
        info = data.meta["splits"].get(name)
        if info is None:
            raise EvalError(f"{data.path} has no {name!r} split (it has {', '.join(data.meta['splits'])})")
        super().__init__(f"the {name} split of {data.path}", characters=int(info["characters"]), oov_characters=None,
                         total_tokens=int(info["tokens"]))
        self.shards, self.vocab_size, self.eot_id = data.split(name), len(data.tokenizer), data.tokenizer.eot_id
        self.notes.documents = int(info.get("documents", 0))

    def chunks(self) -> Iterator[np.ndarray]:
        yield np.array([self.eot_id], dtype=np.int64)
        for shard in self.shards:
            for i in range(0, len(shard), PIECE_TOKENS):
                ids = np.asarray(shard[i : i + PIECE_TOKENS], dtype=np.int64)
                check_in_vocabulary(ids, self.vocab_size, f"a shard of {self.description}")
                yield ids


def describe_paths(paths: list[str]) -> str:
    names = ", ".join(str(p) for p in paths[:3])
    return names + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def open_split(folder: str | Path, name: str, tokenizer: Tokenizer, model: str | Path = "the model") -> SplitStream:
    """A prepared split, refused when it was encoded with another vocabulary than that of
    `model` (named in the message: with several runs, the data folder is the first's)."""
    data = load_data(folder)
    if data.tokenizer.fingerprint() != tokenizer.fingerprint():
        raise EvalError(f"{folder} was prepared with another vocabulary than {model}'s; "
                        f"give the text as files instead, and each model encodes them with its own")
    return SplitStream(data, name)
