"""Token shards: one binary file of token ids behind a 32-byte header.

Header (little-endian): magic b"GPTOKENS", u32 format version, u32 bytes per token
(1, 2 or 4: unsigned), u64 token count, 8 reserved zero bytes. The ids follow, so a shard
opens zero-copy with `np.memmap(path, dtype, offset=32)`. The header's count must match the
file size exactly, which catches truncated and padded files.
"""
from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import numpy as np

from plumbing.errors import check_version

from ..errors import DataError, writing

MAGIC = b"GPTOKENS"
SHARD_VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")
HEADER_SIZE = HEADER.size  # 32
DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}
IOV_MAX = 1024  # buffers one pwritev takes at most (Linux, macOS)


def pack_header(n_tokens: int, dtype: np.dtype) -> bytes:
    return HEADER.pack(MAGIC, SHARD_VERSION, np.dtype(dtype).itemsize, n_tokens)


def create_shard(path: Path, n_tokens: int, dtype: np.dtype) -> None:
    """Create a shard of the final size, ids to be filled in later (by several writers)."""
    with open(path, "wb") as f:
        f.write(pack_header(n_tokens, dtype))
        f.truncate(HEADER_SIZE + n_tokens * np.dtype(dtype).itemsize)


def read_header(path: Path) -> tuple[np.dtype, int]:
    """Validate a shard's header against its size; returns (dtype, token count)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror}") from None
    if len(raw) < HEADER_SIZE:
        raise DataError(f"shard {path} is truncated: {size} bytes, shorter than its header")
    magic, version, width, count = HEADER.unpack(raw)
    if magic != MAGIC:
        raise DataError(f"{path} is not a token shard (bad magic bytes)")
    check_version(version, SHARD_VERSION, f"shard {path}", DataError)
    if width not in DTYPES:
        raise DataError(f"shard {path} is corrupt: unknown token width {width}")
    expected = HEADER_SIZE + count * width
    if size != expected:
        what = "truncated" if size < expected else "corrupt (longer than its header says)"
        raise DataError(f"shard {path} is {what}: {size} bytes, expected {expected} for {count} tokens")
    return DTYPES[width], count


def open_shard(path: Path) -> np.ndarray:
    """The shard's token ids, memory-mapped read-only."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(count,))


class SplitWriter:
    """Writes a split's token stream, whose total length is known in advance, into shards
    of at most `shard_tokens` ids. `write_at` lets several processes fill disjoint ranges."""

    def __init__(self, folder: Path, split: str, total: int, shard_tokens: int, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.stored = self.dtype.newbyteorder("<")  # the shard's byte order, whatever the machine's
        self.shard_tokens = shard_tokens
        self.paths = [folder / f"{split}_{i:04d}.bin" for i in range(max(1, -(-total // shard_tokens)))]
        self.sizes = [min(shard_tokens, total - i * shard_tokens) for i in range(len(self.paths))]
        self.sizes[-1] = max(self.sizes[-1], 0)
        self._fds: dict[int, int] = {}  # shard -> its open file (one at a time), while write_at is in use

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}  # open files stay with the process that opened them

    def create(self) -> None:
        for path, n in zip(self.paths, self.sizes):
            with writing(path):
                create_shard(path, n, self.dtype)

    def write_at(self, offset: int, ids: np.ndarray) -> None:
        data = np.ascontiguousarray(ids, dtype=self.stored)
        while len(data):
            shard, local = divmod(offset, self.shard_tokens)
            n = min(len(data), self.sizes[shard] - local)
            self._write(shard, local, [data[:n]], n)
            data, offset = data[n:], offset + n

    def write_parts(self, offset: int, parts: list[np.ndarray]) -> int:
        """Write `parts` (contiguous arrays of this writer's type) laid end to end at
        `offset`, with no joined copy where they fall in one shard; returns the ids
        written. Pass 2 writes a block's pieces and the end-of-text tokens between them so."""
        n = sum(len(p) for p in parts)
        shard, local = divmod(offset, self.shard_tokens)
        if (n and local + n <= self.sizes[shard] and len(parts) <= IOV_MAX and hasattr(os, "pwritev")
                and all(p.dtype == self.stored for p in parts)):  # else made little-endian first
            self._write(shard, local, parts, n)
        elif n:
            self.write_at(offset, np.concatenate(parts))
        return n

    def _write(self, shard: int, local: int, parts: list[np.ndarray], n: int) -> None:
        with writing(self.paths[shard]):
            if shard not in self._fds:
                self.close()  # one open at a time: a range crosses shards in order, and tiny shards are many
                self._fds[shard] = os.open(self.paths[shard], os.O_WRONLY)
            fd, at, size = self._fds[shard], HEADER_SIZE + local * self.dtype.itemsize, n * self.dtype.itemsize
            done = os.pwritev(fd, parts, at) if len(parts) > 1 else os.pwrite(fd, parts[0], at)
            if done < size:  # a short write (a disk filling up): the rest, until it fails outright
                rest = memoryview(b"".join(parts))[done:]
                while rest:
                    k = os.pwrite(fd, rest, at + done)
                    if not k:
                        raise OSError(errno.EIO, "nothing written")
                    done, rest = done + k, rest[k:]
            start_writeback(fd, at, size)

    def close(self) -> None:
        """Close the files write_at opened (many small writes share one open each)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the system start writing these bytes to the disk now, without waiting. Nothing
    reads a shard back while it is prepared, and the output is fsynced before it is moved
    into place: written back as pass 2 goes, the shards of 220 MB of text were then on the
    disk when that fsync came, which otherwise waited 0.25 s at the end (2-core Intel Xeon,
    ext4). Linux starts the writeback of dirty pages on POSIX_FADV_DONTNEED and drops only
    the pages already clean; where the call is missing or refused, the fsync does it all."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):  # not on every system (macOS has no posix_fadvise)
        pass


def check_in_vocabulary(ids: np.ndarray, vocab_size: int, where: str) -> None:
    """Refuse ids outside the vocabulary: a damaged or foreign shard, said here rather than
    as an index error deep inside a model."""
    if len(ids) and int(ids.max()) >= vocab_size:
        raise DataError(f"{where} holds token id {int(ids.max())}, outside the vocabulary of {vocab_size} tokens; "
                        "prepare the data again")
