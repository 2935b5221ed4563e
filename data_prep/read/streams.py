"""Byte streams under the text: compression undone by content (xz, gzip, bzip2, nested),
a look at a stream's first bytes before reading it, and a reader that hashes what it reads.
"""
from __future__ import annotations

import bz2
import hashlib
import io
import lzma
from dataclasses import dataclass
from typing import BinaryIO, Callable

from plumbing import fast_zlib

from .tar import TarError

STREAM_BUFFER = 1 << 20  # decompressed content is read ahead this far
MAX_NESTING = 4
DECODE_ERRORS = (TarError, EOFError, lzma.LZMAError, *fast_zlib.ERRORS, OSError, ValueError)


class SourceError(Exception):
    """A file (or archive member) that cannot be used; the message says why."""


@dataclass(frozen=True)
class Compression:
    magic: bytes
    open: Callable[[BinaryIO], BinaryIO]  # a file object decompressing a stream, all of its members
    incremental: Callable[[], object]  # a decompressor object: .decompress(data, max_length)


COMPRESSIONS = {
    "xz": Compression(b"\xfd7zXZ\x00", lambda s: lzma.LZMAFile(s), lzma.LZMADecompressor),
    # zlib-ng's where installed: 2.3x the standard library's inflate (`plumbing.fast_zlib`)
    "gz": Compression(b"\x1f\x8b", lambda s: fast_zlib.gzip.GzipFile(fileobj=s),
                      lambda: fast_zlib.zlib.decompressobj(31)),
    "bz2": Compression(b"BZh", lambda s: bz2.BZ2File(s), bz2.BZ2Decompressor),
}


MAGICS = tuple(c.magic for c in COMPRESSIONS.values())
SNIFF_BYTES = 10  # what sniff_compression needs to see of a stream's start
# bzip2's "BZh" is plain text too ("BZhang wrote..."): a real stream goes on with its block
# size (1-9) and the magic of a first block (pi's digits) or of the end of an empty stream
BZIP2_NEXT = (b"1AY&SY", b"\x17rE8P\x90")


def sniff_compression(head: bytes) -> str | None:
    """The compression whose signature `head` (a stream's first SNIFF_BYTES bytes) starts with."""
    if not head.startswith(MAGICS):  # the common answer, in one C call
        return None
    for kind, c in COMPRESSIONS.items():
        if head.startswith(c.magic):
            if kind == "bz2" and not (head[3:4].isdigit() and head[3:4] != b"0" and head[4:10] in BZIP2_NEXT):
                return None
            return kind
    return None


def decompressor(stream: BinaryIO, kind: str) -> BinaryIO:
    # the files buffer 8 KB at a time through Python code; a larger buffer in front means
    # fewer, larger refills for the many small reads of a tar walk
    return io.BufferedReader(COMPRESSIONS[kind].open(stream), buffer_size=STREAM_BUFFER)


def is_tar(head: bytes) -> bool:
    """Whether `head`, the start of some content, is a tar archive's first header."""
    return head[257:262] == b"ustar"


class ReadStream:
    """What the stream wrappers below share: readable, read into a buffer (zlib-ng's gzip
    reader asks that), and can be read to the end."""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class HashingReader(ReadStream):
    """A read-only file wrapper that hashes every byte read through it."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.sha256 = raw, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        return data

    def close(self) -> None:
        pass


class Peekable(ReadStream):
    """A stream whose first bytes can be looked at before it is read from the start."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.buffer = stream, b""

    def peek(self, n: int) -> bytes:
        self.__dict__.pop("read", None)  # reads go through the buffer again (see read)
        while len(self.buffer) < n:
            more = self.stream.read(n - len(self.buffer))
            if not more:
                break
            self.buffer += more
        return self.buffer[:n]

    def read(self, n: int = -1) -> bytes:
        if not self.buffer:
            self.read = self.stream.read  # nothing held back: later reads skip this layer
            return self.stream.read(n)
        if n < 0:
            data, self.buffer = self.buffer + self.stream.read(), b""
            return data
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        if len(data) < n:
            data += self.stream.read(n - len(data))
        return data


def content_head(stream: BinaryIO, n: int, out: int) -> bytes:
    """Up to `out` leading bytes of the content, compression undone by decompressing only
    that much of the first `n` bytes: a cheap look at what a file holds."""
    data = stream.read(n)
    for _ in range(MAX_NESTING):
        kind = sniff_compression(data[:SNIFF_BYTES])
        if kind is None:
            break
        data = COMPRESSIONS[kind].incremental().decompress(data, out)
    return data[:out]


def open_content(stream: BinaryIO) -> Peekable:
    """Undo any layers of compression: the returned stream yields the content itself."""
    s = Peekable(stream)
    for _ in range(MAX_NESTING):
        kind = sniff_compression(s.peek(SNIFF_BYTES)[:SNIFF_BYTES])
        if kind is None:
            return s
        s = Peekable(decompressor(s, kind))
    raise SourceError("compressed more than four times over")

