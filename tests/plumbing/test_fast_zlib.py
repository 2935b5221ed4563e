"""zlib's and gzip's results, from whichever library computes them."""
import gzip
import io
import zlib

import numpy as np
import pytest

from plumbing import fast_zlib


@pytest.mark.parametrize("data", [b"", b"a", bytes(range(256)) * 1000, np.arange(70_001, dtype=np.uint32),
                                  memoryview(np.arange(5, dtype=np.uint8))])
@pytest.mark.parametrize("start", [0, 0xDEADBEEF])
def test_crc32_is_zlibs(data, start):
    assert fast_zlib.crc32(data, start) == zlib.crc32(data, start)


class ReadOnly(io.RawIOBase):
    """A stream with read and readinto only, as gpt-prepare's readers are."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self.data.readinto(b)


def test_gzip_reads_what_gzip_wrote_every_member():
    data = bytes(range(256)) * 4000
    blob = gzip.compress(data) + gzip.compress(b"and a second member")
    assert fast_zlib.gzip.GzipFile(fileobj=ReadOnly(blob)).read() == data + b"and a second member"
    assert fast_zlib.zlib.decompressobj(31).decompress(blob) == data


@pytest.mark.parametrize("damage", [lambda b: b[:-3], lambda b: b[:20],
                                    lambda b: b[:30] + bytes([b[30] ^ 0xFF]) + b[31:]])
def test_a_damaged_gzip_raises_what_the_reader_catches(damage):
    blob = damage(gzip.compress(bytes(range(256)) * 4000))
    with pytest.raises((*fast_zlib.ERRORS, EOFError)):
        fast_zlib.gzip.GzipFile(fileobj=ReadOnly(blob)).read()


def test_zlib_ng_computes_them_where_installed():
    pytest.importorskip("zlib_ng")
    assert fast_zlib.crc32.__module__ == "zlib_ng.zlib_ng"
    assert fast_zlib.gzip.__name__ == "zlib_ng.gzip_ng"
