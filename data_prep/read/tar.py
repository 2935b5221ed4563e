"""A small streaming tar reader: the regular files of an archive as (name, content), the
content as bytes for a small file and as a stream for a large one, so a member of any size
passes through in bounded memory.

The standard library's `tarfile` parses every header field in Python; OpenWebText holds
millions of small members, so this reader parses only what it needs (name, size, type,
GNU long names and pax overrides) and checks each header's checksum, which is what tells a
corrupt or truncated archive from a good one.
"""
from __future__ import annotations

from typing import BinaryIO, Callable, Iterator

from plumbing import fast_zlib

BLOCK = 512
INLINE_MEMBER = 1 << 20  # files up to this size come as bytes: most are small, and bytes are fastest
MAX_METADATA = 1 << 20  # a long name or pax header is read whole into memory; real ones are a few hundred bytes


class TarError(Exception):
    pass


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256, used for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    return int(digits, 8) if digits else 0


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise TarError(f"truncated tar archive (unexpected end of data in {what})")
        data += more
    return data


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156])
    # the sum of the header's bytes, its own field counted as spaces
    return stored == _byte_sum(header[:148]) + _byte_sum(header[156:412]) + _byte_sum(header[412:]) + 8 * 32


def _byte_sum(data: bytes) -> int:
    """sum(data), for at most 256 bytes, in one C call: Adler-32's low half is one plus
    the bytes' sum modulo 65,521, which 256 bytes (at most 65,280) never reach. sum() walks
    a header's 512 bytes one int at a time: 2 us of the 9 us a member of many small
    documents cost beyond its decompression (2-core Intel Xeon), where the three sums of
    `_checksum_ok` take 0.3 us."""
    return (fast_zlib.zlib.adler32(data) & 0xFFFF) - 1


def _skip(stream: BinaryIO, n: int, what: str) -> None:
    while n > 1 << 20:
        _read_exact(stream, 1 << 20, what)
        n -= 1 << 20
    if n:
        _read_exact(stream, n, what)


class MemberStream:
    """A large file's content, read from the archive's stream as it is asked for; what is
    left unread is skipped when the walk moves on."""

    def __init__(self, stream: BinaryIO, size: int):
        self.stream, self.size, self.left = stream, size, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            data = _read_exact(self.stream, self.left, "a member")
        else:
            data = self.stream.read(min(n, self.left)) if self.left else b""
            if not data and n and self.left:
                raise TarError("truncated tar archive (unexpected end of data in a member)")
        self.left -= len(data)
        return data


LINKS = {b"1": "a hard link", b"2": "a symbolic link"}


def iter_tar(stream: BinaryIO, head: int | None = None,
             on_link: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, bytes | MemberStream]]:
    """(name, content) of each regular file: bytes for files of up to INLINE_MEMBER bytes, a
    MemberStream, valid until the next file, for larger ones. With `head`, only each file's
    first `head` bytes (the rest is read past), which is enough to tell what a file is.
    A link is not followed (its target, where the archive holds it, is read as itself):
    `on_link(name, what it is)` is told of each, so none is dropped without a word."""
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if not header or header == b"\0" * len(header):
            return  # end-of-archive marker (or a clean end of stream)
        if len(header) < BLOCK:
            header += _read_exact(stream, BLOCK - len(header), "a header")
        if not _checksum_ok(header):
            raise TarError("corrupt tar archive (header checksum mismatch)")
        kind = header[156:157]
        size = int(pax.get("size", _number(header[124:136])))
        padded = size + -size % BLOCK
        if kind in (b"L", b"x", b"g"):  # metadata about the next entry (or, "g", all of them)
            if size > MAX_METADATA:
                raise TarError(f"corrupt tar archive (a {size:,}-byte name or pax header)")
            data = _read_exact(stream, padded, "a member")[:size]
            if kind == b"L":
                long_name = data.rstrip(b"\0").decode("utf-8", "replace")
            elif kind == b"x":
                pax = _parse_pax(data)
            continue
        name = pax.get("path") or long_name or _header_name(header)
        if kind in LINKS and on_link is not None:
            link = pax.get("linkpath") or header[157:257].split(b"\0", 1)[0].decode("utf-8", "replace")
            on_link(name, f"{LINKS[kind]} to {link}, not followed (a target inside the archive is read as itself)")
        long_name, pax = None, {}
        read = 0
        if kind in (b"0", b"\0", b"7"):
            read = size if head is None else min(size, head)
            if read <= INLINE_MEMBER:
                yield name, _read_exact(stream, read, "a member")
            else:
                member = MemberStream(stream, read)
                yield name, member
                read -= member.left
        _skip(stream, padded - read, "a member")


def _header_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _parse_pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarError("corrupt tar archive (bad pax record)") from None
        if length <= space - pos:  # a record holds at least its own length field: anything less never ends
            raise TarError("corrupt tar archive (bad pax record)")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return out
