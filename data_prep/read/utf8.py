"""Bytes to text: UTF-8 decoded in pieces, invalid sequences replaced and counted; and the
`Document` every reader yields (a name and its text in chunks).

The count lives in the decoder object that the caller passes around. A codec error handler
(`codecs.register_error`) would do the replacing in C, but it is registered process-wide
by name, so it could only find its counter through global state; decoding strictly and
handling each error here costs nothing on valid text (one C call per piece) and little on
the rare invalid byte.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterator

from .streams import Peekable, SourceError

CHUNK_BYTES = 1 << 22  # text is decoded and handed on in pieces of this many bytes
BINARY_PROBE = 8192  # a NUL byte in this many leading bytes marks content as binary


class BinaryContent(SourceError):
    pass


@dataclass
class Document:
    """A document's text, in chunks so that one of any size streams through (its split is
    decided by a hash of its first characters: `codepoint_files.in_val`)."""

    name: str
    chunks: Iterator[str]


class DecodeStats:
    """Counts of what was replaced or skipped while reading, summed over a unit of work."""

    def __init__(self) -> None:
        self.invalid_utf8 = 0
        self.bad_records = 0  # JSON lines that are not records with text
        self.skipped: list[str] = []  # "name: reason" for archive members that were skipped

    def link_skipped(self, archive: str):
        """What a tar reader calls for a link inside `archive`: a skipped member, named."""
        return lambda member, what: self.skipped.append(f"{archive}::{member}: {what}")


class Utf8Decoder:
    """Decodes one document's bytes, piece by piece: an incomplete sequence at the end of a
    piece waits for the next. Invalid sequences become U+FFFD, exactly as Python's "replace"
    handler does it, and are counted in `stats`; under `strict` they raise a SourceError."""

    def __init__(self, name: str, stats: DecodeStats, strict: bool):
        self.name, self.stats, self.strict = name, stats, strict
        self.pending = b""  # the start of a sequence the last piece ended inside
        self.offset = 0  # bytes of the document before `pending`

    def decode(self, data: bytes, final: bool = False) -> str:
        if self.pending:
            data = self.pending + data
        try:
            text, used = codecs.utf_8_decode(data, "strict", final)
        except UnicodeDecodeError:
            text, used = self._decode_replacing(data, final)
        self.pending = data[used:]
        self.offset += used
        return text

    def _decode_replacing(self, data: bytes, final: bool) -> tuple[str, int]:
        view, parts, pos = memoryview(data), [], 0
        while True:
            try:
                text, used = codecs.utf_8_decode(view[pos:], "strict", final)
                parts.append(text)
                return "".join(parts), pos + used
            except UnicodeDecodeError as e:
                if self.strict:
                    where = self.offset + pos + e.start
                    raise SourceError(f"{self.name}: invalid UTF-8 ({e.reason} at byte {where}); without --strict it "
                                      "is replaced and counted") from None
                parts += [codecs.utf_8_decode(view[pos : pos + e.start], "strict", True)[0], "\ufffd"]
                self.stats.invalid_utf8 += 1
                pos += e.end


def is_binary(head: bytes) -> bool:
    """NUL bytes in the first BINARY_PROBE bytes, which no text has, or a known binary format."""
    return head.find(b"\x00", 0, BINARY_PROBE) >= 0 or head.startswith(tuple(KNOWN_BINARY))


# binary formats a corpus often holds, named in the warning with what to do about them
KNOWN_BINARY = {b"\x28\xb5\x2f\xfd": "zstd-compressed, a format not read here (zstd -d it first)",
                b"PK\x03\x04": "a zip archive, a format not read here (unzip it first)",
                b"7z\xbc\xaf": "a 7-Zip archive, a format not read here (extract it first)"}


def binary_reason(name: str, head: bytes) -> str:
    """Why binary content (see is_binary) is skipped, in words."""
    known = next((why for magic, why in KNOWN_BINARY.items() if head.startswith(magic)), "binary content, not text")
    return f"{name}: {known}"


def text_chunks(stream: Peekable, name: str, stats: DecodeStats, strict: bool) -> Iterator[str]:
    """Decode a byte stream as UTF-8 in chunks, without a leading byte order mark. Binary
    content (NUL bytes) is refused."""
    if is_binary(stream.peek(BINARY_PROBE)):
        raise BinaryContent(binary_reason(name, stream.peek(BINARY_PROBE)))
    decoder = Utf8Decoder(name, stats, strict)
    first = True
    while True:
        data = stream.read(CHUNK_BYTES)
        text = decoder.decode(data, final=not data)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            yield text
        if not data:
            return


def decode_text(data: bytes, name: str, stats: DecodeStats, strict: bool) -> str:
    """A whole document held in memory, without a leading byte order mark."""
    try:
        text = data.decode("utf-8")  # valid text, nearly always: no decoder object needed
    except UnicodeDecodeError:
        text = Utf8Decoder(name, stats, strict).decode(data, final=True)
    return text.removeprefix("\ufeff")
