"""Files written whole or not at all, and the one way a folder's entries reach the disk.

A file is written to a temporary name beside it, flushed and fsynced, then renamed over
the old one, and its folder is fsynced so that the rename itself is durable: a crash at
any moment (a `kill -9` mid-write included) leaves the previous file whole. Folders
replaced whole (`plumbing.output_folder`) use the same `sync_folder`.
"""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even this: the first error is the one to say
            pass
        if isinstance(e, OSError) and e.filename in (None, tmp, str(tmp)):  # a write's error has no file name
            e.filename = str(path)  # the message names the file the user asked for, not the temporary one
        raise
    sync_folder(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def sync_folder(folder: Path) -> None:
    """fsync a folder: its entries are what a rename changes. Not every system can open a
    folder for this, nor every file system sync one; there it is the rename's own care."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """fsync every file under `folder`, then each folder: a failure on a file (EIO) means
    its data may not be on disk, and is raised."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_folder(Path(root))
