"""Documents in a file: a document is a name and an iterator of text chunks, so a
single-file corpus, or an archive member, of any size streams through in bounded memory.

Formats are detected by content: plain UTF-8 text; xz / gzip / bzip2 compressed streams;
tar archives (plain or compressed, nested to any reasonable depth: OpenWebText is a tar of
xz-compressed tars). Records (JSON, Parquet, saved datasets) are in `records`. Archives
are read as streams and never extracted to disk.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import writing
from .inputs import Source
from .records import datasets_documents, json_documents, record_format
from .streams import (
    DECODE_ERRORS,
    MAX_NESTING,
    SNIFF_BYTES,
    HashingReader,
    Peekable,
    SourceError,
    content_head,
    decompressor,
    is_tar,
    open_content,
    sniff_compression,
)
from .tar import MemberStream, TarError, iter_tar
from .utf8 import (
    BINARY_PROBE,
    BinaryContent,
    DecodeStats,
    Document,
    binary_reason,
    decode_text,
    is_binary,
    text_chunks,
)

Member = bytes | BinaryIO  # an archive member's content: small ones as bytes, large ones streamed


def member_documents(member: Member, name: str, stats: DecodeStats, strict: bool, depth: int) -> Iterator[Document]:
    """Documents in an archive member: nested archives and compressed streams are opened
    as streams (a member that expands a thousandfold never sits in memory whole), text is
    one document, binary members are skipped (and counted) unless --strict."""
    if depth > MAX_NESTING:
        raise SourceError(f"{name}: archives nested more than {MAX_NESTING} deep")
    if isinstance(member, bytes):
        if sniff_compression(member[:SNIFF_BYTES]) is None and not is_tar(member):
            # the common case, a small text file: decoded in one go, no stream layers
            if not _skip_binary(member, name, stats, strict):
                text = decode_text(member, name, stats, strict)
                if text:
                    yield Document(name, iter((text,)))
            return
        member = io.BytesIO(member)
    content = Peekable(member)
    head = content.peek(512)
    kind = sniff_compression(head[:SNIFF_BYTES])
    if kind is not None:
        yield from member_documents(decompressor(content, kind), name, stats, strict, depth + 1)
    elif is_tar(head):
        for inner, payload in iter_tar(content, on_link=stats.link_skipped(name)):
            yield from member_documents(payload, f"{name}::{inner}", stats, strict, depth + 1)
    elif not _skip_binary(content.peek(BINARY_PROBE), name, stats, strict):
        yield Document(name, text_chunks(content, name, stats, strict))


def _skip_binary(head: bytes, name: str, stats: DecodeStats, strict: bool) -> bool:
    if not is_binary(head):
        return False
    if strict:
        raise BinaryContent(binary_reason(name, head))
    stats.skipped.append(binary_reason(name, head))
    return True


def stream_documents(raw: BinaryIO, name: str, stats: DecodeStats, strict: bool) -> Iterator[Document]:
    """Documents in a file's byte stream: a (compressed) tar yields its members, anything
    else is one text document read in chunks."""
    content = open_content(raw)
    head = content.peek(512)
    if is_tar(head):
        for member, payload in iter_tar(content, on_link=stats.link_skipped(name)):
            yield from member_documents(payload, f"{name}::{member}", stats, strict, 1)
    elif head[:4] == b"PAR1":
        raise SourceError(f"{name}: a compressed Parquet file is not supported; decompress it first")
    else:
        yield Document(name, text_chunks(content, name, stats, strict))
    content.drain()


HEAD_BYTES = 1 << 13  # a file's first bytes, read once to tell what it holds


def file_kind(path: Path) -> tuple[str, bytes | None]:
    """What a file holds, from one look at its first bytes: "archive of archives" (a tar
    whose first file is itself compressed or a tar, like the OpenWebText release: split
    into one unit of work per member, in parallel), "json lines", "json array" (of
    records), "datasets" (Parquet, or JSON of another shape) or "stream" (text or an
    archive of text, read as one unit). A file that cannot be read is a "stream": reading
    it reports why. Returned with it: the whole file, when the look saw all of it (a small
    file is then not opened again)."""
    raw = b""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEAD_BYTES)
        content = content_head(io.BytesIO(raw), n=len(raw), out=1 << 11)
    except (*DECODE_ERRORS, SourceError):
        return "stream", None
    whole = raw if len(raw) < HEAD_BYTES else None
    records = record_format(path, raw, content)
    if records is not None:
        return records, whole
    return "archive of archives" if is_tar(content) and archive_of_archives(path, content) else "stream", whole


def archive_of_archives(path: Path, head: bytes) -> bool:
    """Whether the tar whose content starts with `head` holds archives; it looks further
    into the file only when the first file's header lies past `head`."""
    for out in (len(head), 1 << 16):
        try:
            if out > len(head):
                with open(path, "rb") as f:
                    head = content_head(f, n=4 * out, out=out)
            for _name, data in iter_tar(io.BytesIO(head), head=512):
                return sniff_compression(data[:SNIFF_BYTES]) is not None or is_tar(data)
            return False
        except TarError:
            continue  # the look ended among the entries before the first file: look further
        except (*DECODE_ERRORS, SourceError):
            return False
    return False


def archive_members(path: Path, name: str, on_done: Callable[[HashingReader], None]) -> Iterator[tuple[str, Member]]:
    """(name, content) of each file in an archive of archives, as `iter_tar` gives them;
    `on_done` gets the hashing reader once the whole file has been read."""
    with open(path, "rb") as f:
        raw = HashingReader(f)
        content = open_content(raw)
        for member, data in iter_tar(content):
            yield f"{name}::{member}", data
        content.drain()
        raw.drain()
        on_done(raw)


def spill(member: MemberStream, path: Path) -> None:
    """A large member of an archive of archives, copied to a scratch file in pieces: the
    worker that reads it needs no copy of it in its job."""
    with writing(path):
        f = open(path, "wb")
    with f:
        for block in iter(lambda: member.read(1 << 20), b""):  # a failure to read is the input's
            with writing(path):  # one to write, the run's
                f.write(block)


def file_documents(source: Source, text_field: str, stats: DecodeStats, strict: bool) -> Iterator[Document]:
    """Every document of one input, in order, read here in one go: what `gpt-eval` reads
    (gpt-prepare reads the same formats, but splits an archive of archives into one unit of
    work per member for its workers)."""
    if source.kind == "saved":
        yield from datasets_documents(source.path, source.name, True, text_field, stats, strict)
        return
    kind, _whole = file_kind(source.path)
    if kind == "datasets":
        yield from datasets_documents(source.path, source.name, False, text_field, stats, strict)
        return
    with open(source.path, "rb") as f:
        if kind in ("json lines", "json array"):
            yield from json_documents(f, source.name, text_field, stats, strict, kind == "json array")
        else:  # text, or archives of text nested to any depth
            yield from stream_documents(f, source.name, stats, strict)
