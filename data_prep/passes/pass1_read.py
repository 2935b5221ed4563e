"""Pass 1: the units of work (a file, or one member of an archive of archives), and for
each, its documents read, their code points stored in its code point file, their characters
counted per split."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from plumbing.errors import first_line

from ..options import PrepareOptions
from ..read import documents as src
from ..read.inputs import Source
from ..read.records import datasets_documents, json_documents
from ..read.streams import DECODE_ERRORS, HashingReader, SourceError
from ..read.tar import TarError
from ..read.utf8 import DecodeStats, Document
from .codepoint_files import ScratchIndex, ScratchWriter

SPILL_MEMBER = 1 << 23  # members of an archive of archives larger than this go to workers as files


@dataclass
class Unit:
    """One piece of pass-1 work: a whole source file, or one member of an archive."""

    index: int
    source: int
    name: str
    size: int
    kind: str  # a file: "stream", "json lines", "json array", "datasets" (records) or "saved" (a saved
    # dataset folder); a member of an archive of archives: "member" (payload) or "spilled"
    path: str | None = None
    payload: bytes | None = None  # a member's content; or a small file's, read already


@dataclass
class UnitResult:
    """What the main process keeps of a unit: a few numbers, and where its scratch is."""

    index: int
    source: int
    size: int
    error: str | None = None
    scratch: ScratchIndex | None = None
    documents: int = 0
    val_documents: int = 0  # by document hash
    chars: dict | None = None  # split -> characters, by document hash
    max_codepoint: int = 0
    counts: dict | None = None  # split -> (code points, counts): merged into totals, then dropped
    invalid_utf8: int = 0
    bad_records: int = 0
    skipped: list = field(default_factory=list)
    sha256: str | None = None


def scratch_path(work: Path, index: int, suffix: str = "cp") -> Path:
    return work / f"{index:07d}.{suffix}"


def make_units(sources: list[Source], source_info: list[dict], work: Path) -> Iterator[Unit]:
    index = 0
    for s_i, source in enumerate(sources):
        kind, whole = src.file_kind(source.path) if source.kind == "file" else (source.kind, None)
        if kind == "archive of archives":

            def done(reader: HashingReader, info=source_info[s_i]) -> None:
                info["sha256"] = reader.sha256.hexdigest()

            try:
                for name, member in src.archive_members(source.path, source.name, done):
                    if not isinstance(member, bytes) and member.size <= SPILL_MEMBER:
                        member = member.read()
                    if isinstance(member, bytes):
                        yield Unit(index, s_i, name, len(member), "member", payload=member)
                    else:
                        spilled = scratch_path(work, index, "member")
                        src.spill(member, spilled)
                        yield Unit(index, s_i, name, member.size, "spilled", path=str(spilled))
                    index += 1
            except DECODE_ERRORS as e:
                source_info[s_i]["error"] = describe_error(source.name, e)
            continue
        yield Unit(index, s_i, source.name, source_info[s_i]["bytes"], kind, path=str(source.path), payload=whole)
        index += 1


def unit_documents(unit: Unit, reader: HashingReader | None, opts: PrepareOptions,
                   stats: DecodeStats) -> Iterator[Document]:
    if unit.kind in ("datasets", "saved"):
        yield from datasets_documents(Path(unit.path), unit.name, unit.kind == "saved", opts.text_field, stats,
                                      opts.strict)
    elif unit.kind in ("json lines", "json array"):
        yield from json_documents(reader, unit.name, opts.text_field, stats, opts.strict, unit.kind == "json array")
    elif unit.kind in ("member", "spilled"):
        member = unit.payload if unit.kind == "member" else reader
        yield from src.member_documents(member, unit.name, stats, opts.strict, depth=1)
    else:
        yield from src.stream_documents(reader, unit.name, stats, opts.strict)


def scan_unit(unit: Unit, work: Path, opts: PrepareOptions) -> UnitResult:
    """Pass 1 for one unit: store its code points in its code point file, count characters."""
    result = UnitResult(unit.index, unit.source, unit.size)
    stats = DecodeStats()
    scratch = ScratchWriter(scratch_path(work, unit.index), opts.val_fraction)
    try:
        with open_unit(unit) as reader:
            for doc in unit_documents(unit, reader, opts, stats):
                scratch.start_document()
                for chunk in doc.chunks:
                    scratch.add(chunk)
                scratch.end_document()
            if reader is not None and unit.kind != "spilled":
                reader.drain()
                result.sha256 = reader.sha256.hexdigest()
        result.scratch, result.counts = scratch.close()
    except (SourceError, *DECODE_ERRORS) as e:
        scratch.abandon()
        if unit.kind in ("member", "spilled") and not opts.strict:
            # one file of an archive of archives: skipped alone, as it would be in a folder
            result.skipped = [describe_error(unit.name, e)]
        else:
            result.error = describe_error(unit.name, e)
        return result
    finally:
        if unit.kind == "spilled":
            Path(unit.path).unlink(missing_ok=True)
    result.chars = {s: int(n.sum()) for s, (_cps, n) in result.counts.items()}
    result.max_codepoint = max((int(cps[-1]) for cps, _n in result.counts.values() if len(cps)), default=0)
    result.documents = len(scratch.docs_chars)
    result.val_documents = sum(scratch.docs_val)
    result.invalid_utf8, result.bad_records, result.skipped = stats.invalid_utf8, stats.bad_records, stats.skipped
    return result


class open_unit:
    """Context manager giving a hashing reader over a unit read from a file (None for other
    kinds)."""

    def __init__(self, unit: Unit):
        self.unit, self.file = unit, None

    def __enter__(self) -> HashingReader | None:
        if self.unit.kind in ("member", "saved"):
            return None
        self.file = io.BytesIO(self.unit.payload) if self.unit.payload is not None else open(self.unit.path, "rb")
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
        return f"{name}: truncated ({first_line(e)})"
    if isinstance(e, TarError):
        return f"{name}: {first_line(e)}"
    return f"{name}: corrupt or unreadable ({type(e).__name__}: {first_line(e)})"


class Scan:
    """Pass 1 over a group of units, as a picklable callable for the worker processes."""

    def __init__(self, work: Path, opts: PrepareOptions):
        self.work, self.opts = work, opts

    def __call__(self, units: list[Unit]) -> list[UnitResult]:
        return [scan_unit(unit, self.work, self.opts) for unit in units]
