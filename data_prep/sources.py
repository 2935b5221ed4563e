"""Corpus sources: find the files, detect their format from their bytes, yield documents.

A document is a name and an iterator of text chunks, so a 10 GB single-file corpus streams
through in bounded memory. Formats, detected by content (JSON also by its extension):
plain UTF-8 text; xz / gzip / bzip2 compressed streams; tar archives (plain or
compressed, nested to any reasonable depth: OpenWebText is a tar of xz-compressed tars);
JSON lines / JSON / Parquet files and `datasets.save_to_disk` folders, read through the
`datasets` library. Archives are read as streams in memory and never extracted to disk.
"""
from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import io
import lzma
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import DataError, first_line
from .tar import TarError, iter_tar

CHUNK_BYTES = 1 << 22  # text is decoded and handed on in pieces of this many bytes
STREAM_BUFFER = 1 << 20  # decompressed content is read ahead this far
BINARY_PROBE = 8192  # a NUL byte in this many leading bytes marks a file as binary
MAX_NESTING = 4
JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
COMPRESSED_SUFFIXES = {".xz", ".gz", ".bz2", ".lzma"}
COMPRESSION_MAGIC = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gz", b"BZh": "bz2"}
DECODE_ERRORS = (TarError, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile, OSError, ValueError)


class SourceError(Exception):
    """A file (or archive member) that cannot be used; the message says why."""


class BinaryContent(SourceError):
    pass


Document = tuple[str, Iterator[str]]


@dataclass
class Source:
    """One input named on the command line or found in a folder."""

    path: Path
    kind: str  # "file" or "datasets" (a save_to_disk folder)

    @property
    def size(self) -> int:
        if self.kind == "datasets":
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size


# -- discovery -----------------------------------------------------------------------------
def is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def discover(paths: list[str | Path]) -> list[Source]:
    """Every input file under `paths`, folders searched recursively (hidden entries
    skipped), in a stable order so the same inputs always give the same output."""
    found: list[Source] = []
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise DataError(f"input path does not exist: {p}")
        if p.is_dir():
            if is_saved_dataset(p):
                found.append(Source(p, "datasets"))
                continue
            for root, dirs, files in os.walk(p):
                rootp = Path(root)
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for d in list(dirs):
                    if is_saved_dataset(rootp / d):
                        found.append(Source(rootp / d, "datasets"))
                        dirs.remove(d)
                found += [Source(rootp / f, "file") for f in sorted(files) if not f.startswith(".")]
        else:
            found.append(Source(p, "file"))
    return found


# -- byte-level helpers ----------------------------------------------------------------------
class ReadStream:
    """What the stream wrappers below share: readable, and can be read to the end."""

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class HashingReader(ReadStream):
    """A read-only file wrapper that hashes and counts every byte read through it."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.sha256, self.bytes_read = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        pass


def sniff_compression(head: bytes) -> str | None:
    for magic, kind in COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def decompressor(stream: BinaryIO, kind: str) -> BinaryIO:
    if kind == "xz":
        f = lzma.LZMAFile(stream)
    elif kind == "gz":
        f = gzip.GzipFile(fileobj=stream)
    else:
        f = bz2.BZ2File(stream)
    # the files buffer 8 KB at a time through Python code; a larger buffer in front means
    # fewer, larger refills for the many small reads of a tar walk
    return io.BufferedReader(f, buffer_size=STREAM_BUFFER)


def is_tar(head: bytes) -> bool:
    """Whether `head`, the start of some content, is a tar archive's first header."""
    return head[257:262] == b"ustar"


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
        kind = sniff_compression(data[:6])
        if kind is None:
            break
        d = lzma.LZMADecompressor() if kind == "xz" else zlib.decompressobj(31) if kind == "gz" else bz2.BZ2Decompressor()
        data = d.decompress(data, out)
    return data[:out]


def open_content(stream: BinaryIO) -> Peekable:
    """Undo any layers of compression: the returned stream yields the content itself."""
    s = Peekable(stream)
    for _ in range(MAX_NESTING):
        kind = sniff_compression(s.peek(6))
        if kind is None:
            return s
        s = Peekable(decompressor(s, kind))
    raise SourceError("compressed more than four times over")


# -- text decoding -----------------------------------------------------------------------------
class DecodeStats:
    """Counts of what was replaced or skipped while reading, summed over a unit of work."""

    def __init__(self) -> None:
        self.invalid_utf8 = 0
        self.skipped: list[str] = []  # "name: reason" for archive members that were skipped

    def replace_error(self, exc: UnicodeDecodeError) -> tuple[str, int]:
        self.invalid_utf8 += 1
        return "\ufffd", exc.end


_current_stats: DecodeStats | None = None


def _count_and_replace(exc: UnicodeError) -> tuple[str, int]:
    assert _current_stats is not None and isinstance(exc, UnicodeDecodeError)
    return _current_stats.replace_error(exc)


codecs.register_error("data_prep.count", _count_and_replace)


def text_chunks(stream: Peekable, name: str, stats: DecodeStats, strict: bool) -> Iterator[str]:
    """Decode a byte stream as UTF-8 in chunks. Binary content (NUL bytes) is refused;
    invalid sequences become U+FFFD and are counted, or fail under `strict`."""
    global _current_stats
    if b"\x00" in stream.peek(BINARY_PROBE):
        raise BinaryContent(f"{name}: binary content, not text")
    decoder = codecs.getincrementaldecoder("utf-8")("strict" if strict else "data_prep.count")
    first = True
    while True:
        data = stream.read(CHUNK_BYTES)
        _current_stats = stats
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise SourceError(f"{name}: invalid UTF-8 ({e.reason} in a chunk near byte {e.start}); without --strict it is replaced and counted") from None
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            yield text
        if not data:
            return


# -- documents ---------------------------------------------------------------------------------
def decompress_bytes(data: bytes, kind: str) -> bytes:
    if kind == "xz":
        return lzma.decompress(data)
    if kind == "gz":
        return gzip.decompress(data)
    return bz2.decompress(data)


def decode_text(data: bytes, name: str, stats: DecodeStats, strict: bool) -> str:
    global _current_stats
    _current_stats = stats
    try:
        text = data.decode("utf-8", "strict" if strict else "data_prep.count")
    except UnicodeDecodeError as e:
        raise SourceError(f"{name}: invalid UTF-8 ({e.reason} at byte {e.start}); without --strict it is replaced and counted") from None
    return text.removeprefix("\ufeff")


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


def datasets_documents(source: Source, text_field: str) -> Iterator[Document]:
    """Records of a JSON / JSON lines / Parquet file or a saved dataset, one document each."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise SourceError(f"{source.path}: reading this format needs the 'datasets' package") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        if source.kind == "datasets":
            loaded = datasets.load_from_disk(str(source.path))
            parts = [loaded[k] for k in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
        else:
            builder = "parquet" if source_head(source.path)[:4] == b"PAR1" else "json"
            parts = [datasets.load_dataset(builder, data_files=[str(source.path)], split="train", streaming=True)]
        for part in parts:
            columns = part.column_names
            if columns is not None and text_field not in columns:
                raise SourceError(f"{source.path}: no field {text_field!r} (fields: {', '.join(columns)}); choose one with --text-field")
            index = 0
            for batch in part.select_columns([text_field]).iter(batch_size=1000):
                for value in batch[text_field]:
                    index += 1
                    if isinstance(value, str) and value:
                        yield f"{source.path}#{index}", iter([value])
    except SourceError:
        raise
    except Exception as e:  # the datasets library raises many kinds; all mean "unreadable"
        raise SourceError(f"{source.path}: cannot read as a dataset ({first_line(e)})") from None


def source_head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_dataset_file(path: Path) -> bool:
    """JSON is recognised by its extension (after any compression suffix) and its first
    byte; Parquet by its magic bytes."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    if source_head(path, 4) == b"PAR1":
        return True
    if suffixes and suffixes[-1] in JSON_SUFFIXES:
        with open(path, "rb") as f:
            head = open_content(f).peek(256).lstrip()
        return head[:1] in (b"{", b"[")
    return False


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
