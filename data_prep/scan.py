"""Pass 1: the units of work (a file, or one member of an archive of archives), and for
each, its documents read, their code points stored in a scratch file, their characters
counted per split."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from . import sources as src
from .dataset import SPLITS
from .decode import DecodeStats
from .discovery import Source
from .options import PrepareOptions
from .records import Document, datasets_documents, is_dataset_file
from .scratch import ScratchWriter, sparse
from .streams import DECODE_ERRORS, HashingReader, SourceError
from .tar import TarError


@dataclass
class Unit:
    """One piece of pass-1 work: a whole source file, or one member of an archive."""

    index: int
    source: int
    name: str
    size: int
    kind: str  # "file", "datasets" or "bytes"
    path: str | None = None
    payload: bytes | None = None


@dataclass
class UnitResult:
    index: int
    source: int
    size: int
    error: str | None = None
    docs_chars: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    docs_val: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    counts: dict = field(default_factory=lambda: {s: sparse(np.zeros(0, np.int64)) for s in SPLITS})  # split -> (code points, counts), split by document hash
    batches: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    invalid_utf8: int = 0
    skipped: list = field(default_factory=list)
    sha256: str | None = None


def scratch_path(work: Path, index: int) -> Path:
    return work / f"{index:07d}.cp"


def make_units(sources: list[Source], source_info: list[dict]) -> Iterator[Unit]:
    index = 0
    for s_i, source in enumerate(sources):
        if source.kind == "file" and src.archive_of_archives(source.path):

            def done(reader: HashingReader, info=source_info[s_i]) -> None:
                info["sha256"] = reader.sha256.hexdigest()

            try:
                for name, payload in src.archive_members(source.path, done):
                    yield Unit(index, s_i, name, len(payload), "bytes", payload=payload)
                    index += 1
            except DECODE_ERRORS as e:
                source_info[s_i]["error"] = describe_error(str(source.path), e)
            continue
        yield Unit(index, s_i, str(source.path), source_info[s_i]["bytes"], source.kind, path=str(source.path))
        index += 1


def unit_documents(unit: Unit, reader: HashingReader | None, opts: PrepareOptions, stats: DecodeStats) -> Iterator[Document]:
    if unit.kind == "datasets":
        yield from datasets_documents(Path(unit.path), True, opts.text_field)
    elif unit.kind == "bytes":
        yield from src.member_documents(unit.payload, unit.name, stats, opts.strict, depth=1)
    elif is_dataset_file(Path(unit.path)):
        yield from datasets_documents(Path(unit.path), False, opts.text_field)
    else:
        yield from src.stream_documents(reader, unit.name, stats, opts.strict)


def scan_unit(unit: Unit, work: Path, opts: PrepareOptions) -> UnitResult:
    """Pass 1 for one unit: store its code points in its scratch file, count characters."""
    result = UnitResult(unit.index, unit.source, unit.size)
    stats = DecodeStats()
    scratch = ScratchWriter(scratch_path(work, unit.index), opts.val_fraction)
    docs_chars = []
    try:
        with open_unit(unit) as reader:
            for _name, chunks in unit_documents(unit, reader, opts, stats):
                n_chars = 0
                for chunk in chunks:
                    scratch.add(chunk, new_doc=n_chars == 0)
                    n_chars += len(chunk)
                if n_chars:
                    docs_chars.append(n_chars)
            if reader is not None:
                reader.drain()
                result.sha256 = reader.sha256.hexdigest()
        scratch.close()
    except (SourceError, *DECODE_ERRORS) as e:
        scratch.file.close()
        if unit.kind == "bytes" and not opts.strict:
            # one file of an archive of archives: skipped alone, as it would be in a folder
            result.skipped = [describe_error(unit.name, e)]
        else:
            result.error = describe_error(unit.name, e)
        return result
    result.docs_chars = np.array(docs_chars, np.int64)
    result.docs_val = np.array(scratch.docs_val, bool)
    result.counts = scratch.counts()
    result.batches = np.array(scratch.batches, np.int64).reshape(-1, 3)
    result.invalid_utf8, result.skipped = stats.invalid_utf8, stats.skipped
    return result


class open_unit:
    """Context manager giving a hashing reader over a file unit (None for other kinds)."""

    def __init__(self, unit: Unit):
        self.unit, self.file = unit, None

    def __enter__(self) -> HashingReader | None:
        if self.unit.kind != "file":
            return None
        self.file = open(self.unit.path, "rb")
        return HashingReader(self.file)

    def __exit__(self, *exc) -> None:
        if self.file:
            self.file.close()


def describe_error(name: str, e: BaseException) -> str:
    if isinstance(e, SourceError):
        return str(e)
    if isinstance(e, PermissionError):
        return f"{name}: permission denied"
    if isinstance(e, EOFError):
        return f"{name}: truncated ({e})"
    if isinstance(e, TarError):
        return f"{name}: {e}"
    return f"{name}: corrupt or unreadable ({type(e).__name__}: {e})"


class Scan:
    """Pass 1 over a group of units, as a picklable callable for the worker processes."""

    def __init__(self, work: Path, opts: PrepareOptions):
        self.work, self.opts = work, opts

    def __call__(self, units: list[Unit]) -> list[UnitResult]:
        return [scan_unit(unit, self.work, self.opts) for unit in units]
