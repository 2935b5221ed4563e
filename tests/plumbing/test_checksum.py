"""CRC-32 gives zlib's values, from whichever library computes it."""
import zlib

import numpy as np
import pytest

from plumbing import checksum


@pytest.mark.parametrize("data", [b"", b"a", bytes(range(256)) * 1000, np.arange(70_001, dtype=np.uint32),
                                  memoryview(np.arange(5, dtype=np.uint8))])
@pytest.mark.parametrize("start", [0, 0xDEADBEEF])
def test_crc32_is_zlibs(data, start):
    assert checksum.crc32(data, start) == zlib.crc32(data, start)


def test_zlib_ng_computes_it_where_installed():
    pytest.importorskip("zlib_ng")
    assert checksum.crc32.__module__ == "zlib_ng.zlib_ng"
