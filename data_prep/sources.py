"""Documents in a file: a document is a name and an iterator of text chunks, so a 10 GB
single-file corpus streams through in bounded memory.

Formats are detected by content: plain UTF-8 text; xz / gzip / bzip2 compressed streams;
tar archives (plain or compressed, nested to any reasonable depth: OpenWebText is a tar of
xz-compressed tars). Records (JSON, Parquet, saved datasets) are in `records`. Archives
are read as streams in memory and never extracted to disk.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .decode import BINARY_PROBE, BinaryContent, DecodeStats, decode_text, text_chunks
from .records import Document
from .streams import DECODE_ERRORS, MAX_NESTING, HashingReader, SourceError, content_head, decompress_bytes, is_tar, open_content, sniff_compression
from .tar import TarError, iter_tar


def member_documents(data: bytes, name: str, stats: DecodeStats, strict: bool, depth: int) -> Iterator[Document]:
    """Documents in an archive member held in memory: nested archives are opened, text
    is one document, binary members are skipped (and counted) unless --strict."""
    if depth > MAX_NESTING:
        raise SourceError(f"{name}: archives nested more than {MAX_NESTING} deep")
    kind = sniff_compression(data[:6])
    if kind is not None:
        yield from member_documents(decompress_bytes(data, kind), name, stats, strict, depth + 1)
    elif is_tar(data):
        for member, payload in iter_tar(io.BytesIO(data)):
            yield from member_documents(payload, f"{name}::{member}", stats, strict, depth + 1)
    elif data.find(b"\x00", 0, BINARY_PROBE) >= 0:
        if strict:
            raise BinaryContent(f"{name}: binary content, not text")
        stats.skipped.append(f"{name}: binary content, not text")
    else:
        text = decode_text(data, name, stats, strict)
        if text:
            yield name, iter((text,))


def stream_documents(raw: BinaryIO, name: str, stats: DecodeStats, strict: bool) -> Iterator[Document]:
    """Documents in a file's byte stream: a (compressed) tar yields its members, anything
    else is one text document read in chunks."""
    content = open_content(raw)
    head = content.peek(512)
    if is_tar(head):
        for member, payload in iter_tar(content):
            yield from member_documents(payload, f"{name}::{member}", stats, strict, 1)
    elif head[:4] == b"PAR1":
        raise SourceError(f"{name}: a compressed Parquet file is not supported; decompress it first")
    else:
        yield name, text_chunks(content, name, stats, strict)
    content.drain()


def archive_of_archives(path: Path) -> bool:
    """True for a tar whose first file is itself compressed or a tar (the OpenWebText
    release): such archives are split into one unit of work per member, in parallel.
    It runs for every input file, so it decompresses only the first few KB of content."""
    for out in (1 << 11, 1 << 16):  # most archives' first file starts within 2 KB
        try:
            with open(path, "rb") as f:
                head = content_head(f, n=4 * out, out=out)
            if not is_tar(head):
                return False
            for _name, data in iter_tar(io.BytesIO(head), head=512):
                return sniff_compression(data[:6]) is not None or is_tar(data)
            return False
        except TarError:
            continue  # the look ended among the entries before the first file: look further
        except (*DECODE_ERRORS, SourceError):
            return False
    return False


def archive_members(path: Path, on_done: Callable[[HashingReader], None]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file in an archive of archives; `on_done` gets the hashing
    reader once the whole file has been read."""
    with open(path, "rb") as f:
        raw = HashingReader(f)
        content = open_content(raw)
        for member, data in iter_tar(content):
            yield f"{path}::{member}", data
        content.drain()
        raw.drain()
        on_done(raw)
