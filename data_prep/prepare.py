"""`prepare()`: corpus -> documents -> vocabulary -> train/val token shards.

Pass 1 (parallel; the expensive part: decompression and parsing) reads each unit of work
(a file, or one member of an archive of archives), stores its documents' code points in a
scratch file and returns per-split character counts. The vocabulary is built from the
training counts; the counts also give every unit's exact token count, hence its place in
each split. Pass 2 (parallel, pure numpy) maps the scratch code points to ids and writes
them straight into their place in the shards. All of it happens in a hidden temporary
folder that is renamed into place only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from . import sources as src
from .dataset import DATA_FORMAT, DATA_VERSION, META_FILE, SPLITS, TOKENIZER_FILE
from .errors import DataError
from .shards import SplitWriter
from .tokenizer import CharTokenizer, build_vocab, codepoints, utf8_length

N_CODEPOINTS = 0x110000
MIN_DOCS_FOR_DOCUMENT_SPLIT = 100  # fewer documents than this: split inside the text
BATCH_CHARS = 1 << 23  # characters converted, counted and encoded per numpy call


@dataclass
class PrepareOptions:
    val_fraction: float = 0.1
    max_vocab: int = 2048
    min_char_count: int = 1
    oov: str = "byte"  # byte fallback, or "unk"
    text_field: str = "text"
    shard_tokens: int = 100_000_000
    workers: int = 0  # 0: all cores
    strict: bool = False
    force: bool = False
    progress: bool = True

    def validate(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise DataError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.max_vocab < 2:
            raise DataError(f"--max-vocab must be at least 2, got {self.max_vocab}")
        if self.min_char_count < 1:
            raise DataError(f"--min-char-count must be at least 1, got {self.min_char_count}")
        if self.oov not in ("byte", "unk"):
            raise DataError(f"--oov must be 'byte' or 'unk', got {self.oov!r}")
        if self.shard_tokens < 1:
            raise DataError(f"--shard-tokens must be positive, got {self.shard_tokens}")
        if self.workers < 0:
            raise DataError(f"--workers must be 0 (all cores) or more, got {self.workers}")


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


@dataclass
class Summary:
    out: Path
    meta: dict
    seconds: float
    text_bytes: int
    warnings: list[str]

    @property
    def mb_per_s(self) -> float:
        return self.text_bytes / 1e6 / max(self.seconds, 1e-9)


# -- scratch: a unit's documents as code points, uint16 batches where they fit ---------------------
def add_counts(dense: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if len(counts) > len(dense):
        counts[: len(dense)] += dense
        return counts
    dense[: len(counts)] += counts
    return dense


def sparse(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code points, counts) of the non-zero entries, in 32 bits where they fit: the main
    process holds one pair per split and unit of work until pass 2."""
    nz = np.flatnonzero(dense)
    counts = dense[nz]
    return nz.astype(np.uint32), counts.astype(np.uint32) if len(counts) and counts.max() < 2**32 else counts


def val_hash(cps: np.ndarray, val_fraction: float) -> bool:
    """A document goes to val by a hash of its content (its first chunk: the whole text for
    all but very large documents), so identical texts always share a split."""
    h = (zlib.crc32(cps) * 0x9E3779B1) & 0xFFFFFFFF  # crc32, bits mixed by a Fibonacci multiplier
    return h < val_fraction * 2**32


class ScratchWriter:
    """Collects a unit's text chunks and, per batch, converts them to code points once:
    they decide each new document's split, are counted, then stored for pass 2."""

    def __init__(self, path: Path, val_fraction: float):
        self.file = open(path, "wb")
        self.val_fraction = val_fraction
        self.batches: list[tuple[int, int, int]] = []  # (byte offset, characters, bytes per char)
        self.offset = 0
        self.texts: list[str] = []
        self.new_doc: list[bool] = []
        self.pending = 0
        self.docs_val: list[bool] = []
        self.all_counts = np.zeros(0, np.int64)
        self.val_counts = np.zeros(0, np.int64)

    def add(self, text: str, new_doc: bool) -> None:
        self.texts.append(text)
        self.new_doc.append(new_doc)
        self.pending += len(text)
        if self.pending >= BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        if not self.texts:
            return
        cps = codepoints("".join(self.texts))
        val_parts, end = [], 0
        for text, new in zip(self.texts, self.new_doc):
            start, end = end, end + len(text)
            if new:
                self.docs_val.append(val_hash(cps[start:end], self.val_fraction))
            if self.docs_val[-1]:
                val_parts.append(cps[start:end])
        stored = cps.astype(np.uint16) if int(cps.max()) < 0x10000 else cps
        self.all_counts = add_counts(self.all_counts, np.bincount(stored))
        if val_parts:
            self.val_counts = add_counts(self.val_counts, np.bincount(np.concatenate(val_parts)))
        self.file.write(stored)
        self.batches.append((self.offset, len(cps), stored.itemsize))
        self.offset += stored.nbytes
        self.texts, self.new_doc, self.pending = [], [], 0

    def close(self) -> None:
        self.flush()
        self.file.close()

    def counts(self) -> dict:
        train = self.all_counts.copy()
        train[: len(self.val_counts)] -= self.val_counts
        return {"train": sparse(train), "val": sparse(self.val_counts)}


class ScratchReader:
    def __init__(self, path: Path, batches: np.ndarray):
        self.path, self.batches = path, batches
        self.starts = np.concatenate(([0], np.cumsum(batches[:, 1]))) if len(batches) else np.zeros(1, np.int64)

    def blocks(self, start: int = 0, n: int | None = None) -> Iterator[np.ndarray]:
        """Code points [start, start + n) as arrays of at most one batch each."""
        n = int(self.starts[-1] - start if n is None else n)
        with open(self.path, "rb") as f:
            b = int(np.searchsorted(self.starts, start, "right") - 1)
            while n > 0:
                offset, chars, width = (int(x) for x in self.batches[b])
                local = start - int(self.starts[b])
                take = min(n, chars - local)
                f.seek(offset + local * width)
                yield np.fromfile(f, dtype=np.uint16 if width == 2 else np.uint32, count=take)
                start, n, b = start + take, n - take, b + 1


# -- pass 1 ---------------------------------------------------------------------------------
def unit_documents(unit: Unit, reader: src.HashingReader | None, opts: PrepareOptions, stats: src.DecodeStats) -> Iterator[src.Document]:
    if unit.kind == "datasets":
        yield from src.datasets_documents(src.Source(Path(unit.path), "datasets"), opts.text_field)
    elif unit.kind == "bytes":
        yield from src.member_documents(unit.payload, unit.name, stats, opts.strict, depth=1)
    elif src.is_dataset_file(Path(unit.path)):
        yield from src.datasets_documents(src.Source(Path(unit.path), "file"), opts.text_field)
    else:
        yield from src.stream_documents(reader, unit.name, stats, opts.strict)


def scan_unit(unit: Unit, work: Path, opts: PrepareOptions) -> UnitResult:
    """Pass 1 for one unit: store its code points in `work/<index>.cp`, count characters."""
    result = UnitResult(unit.index, unit.source, unit.size)
    stats = src.DecodeStats()
    scratch = ScratchWriter(work / f"{unit.index:07d}.cp", opts.val_fraction)
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
    except (src.SourceError, *src.DECODE_ERRORS) as e:
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

    def __enter__(self) -> src.HashingReader | None:
        if self.unit.kind != "file":
            return None
        self.file = open(self.unit.path, "rb")
        return src.HashingReader(self.file)

    def __exit__(self, *exc) -> None:
        if self.file:
            self.file.close()


def describe_error(name: str, e: BaseException) -> str:
    if isinstance(e, src.SourceError):
        return str(e)
    if isinstance(e, PermissionError):
        return f"{name}: permission denied"
    if isinstance(e, EOFError):
        return f"{name}: truncated ({e})"
    if isinstance(e, src.TarError):
        return f"{name}: {e}"
    return f"{name}: corrupt or unreadable ({type(e).__name__}: {e})"


# -- pass 2 ---------------------------------------------------------------------------------
@dataclass
class EncodeJob:
    index: int
    scratch: ScratchReader
    segments: tuple  # (in val?, characters) arrays, in order; an end-of-text token follows each
    offsets: dict  # split -> position of this unit's first token in the split
    expected: dict  # split -> tokens this unit must produce

    @property
    def chars(self) -> int:
        return int(self.scratch.starts[-1])


def document_segments(docs_chars: np.ndarray, docs_val: np.ndarray | None, tails: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A unit's segments as (in val?, characters) arrays: its documents, split by document
    (`docs_val`), or each split inside into a train head and a val tail (`tails`: characters
    to val), empty parts left out."""
    if docs_val is not None:
        return docs_val.astype(bool), docs_chars.astype(np.int64)
    in_val = np.tile([False, True], len(docs_chars))
    chars = np.stack([docs_chars - tails, tails], axis=1).ravel()
    return in_val[chars > 0], chars[chars > 0]


def segment_list(segments: tuple[np.ndarray, np.ndarray]) -> list[tuple[str, int]]:
    return [(SPLITS[v], n) for v, n in zip(segments[0].tolist(), segments[1].tolist())]  # SPLITS[True] is "val"


def encode_unit(job: EncodeJob, tok: CharTokenizer, writers: dict) -> dict:
    pieces: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    eots: dict[str, list[int]] = {s: [] for s in SPLITS}
    pending = {s: 0 for s in SPLITS}
    offsets = dict(job.offsets)

    def flush(split: str) -> None:
        if pieces[split]:
            cps = pieces[split][0] if len(pieces[split]) == 1 else np.concatenate(pieces[split])
            ids = tok.encode_codepoints(cps, eots[split], dtype=writers[split].dtype)
            writers[split].write_at(offsets[split], ids)
            offsets[split] += len(ids)
        pieces[split], eots[split], pending[split] = [], [], 0

    blocks = job.scratch.blocks()
    block, pos = np.zeros(0, np.uint16), 0
    for split, n in segment_list(job.segments):
        while n:
            if pos == len(block):
                block, pos = next(blocks), 0
            take = min(n, len(block) - pos)
            pieces[split].append(block[pos : pos + take])
            pending[split] += take
            pos, n = pos + take, n - take
        eots[split].append(pending[split])
        if pending[split] >= BATCH_CHARS:
            flush(split)
    for split in SPLITS:
        flush(split)
        made = offsets[split] - job.offsets[split]
        if made != job.expected[split]:
            raise RuntimeError(f"unit {job.index}: {split} produced {made} tokens, expected {job.expected[split]}")
    job.scratch.path.unlink()  # done with it: frees the disk now, and in parallel, not at the end
    return {s: offsets[s] - job.offsets[s] for s in SPLITS}


# -- orchestration ---------------------------------------------------------------------------
GROUP_BYTES = 1 << 20  # pass-1 units go to a worker in groups of about this much input
GROUP_CHARS = 1 << 21  # and pass-2 units in groups of about this many characters (a short tail)


class Workers:
    """Worker processes shared by both passes (none for one worker: jobs run here)."""

    def __init__(self, n: int):
        self.n = n
        self.pool = ProcessPoolExecutor(max_workers=n) if n > 1 else None

    def map(self, fn: Callable, jobs: Iterable) -> Iterator:
        """fn(job) for each job, results in job order, with few jobs in flight (archive
        members read ahead of the workers stay bounded in memory)."""
        if self.pool is None:
            yield from map(fn, jobs)
            return
        pending: deque[Future] = deque()
        for job in jobs:
            pending.append(self.pool.submit(fn, job))
            if len(pending) >= 2 * self.n:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def grouped(items: Iterable, size: Callable, limit: int) -> Iterator[list]:
    """Consecutive items in groups of about `limit` by `size`: small units of work (an
    archive member, a small file) would otherwise cost more in process hand-offs than in work."""
    group, total = [], 0
    for item in items:
        group.append(item)
        total += size(item)
        if total >= limit:
            yield group
            group, total = [], 0
    if group:
        yield group


class _Scan:  # picklable callables for the process pool
    def __init__(self, work: Path, opts: PrepareOptions):
        self.work, self.opts = work, opts

    def __call__(self, units: list[Unit]) -> list[UnitResult]:
        return [scan_unit(unit, self.work, self.opts) for unit in units]


@lru_cache(maxsize=1)
def _tokenizer(spec: str) -> CharTokenizer:
    return CharTokenizer.from_json(spec)  # once per worker process, not once per group


class _Encode:
    def __init__(self, tokenizer: CharTokenizer, writers: dict):
        self.tokenizer, self.writers = tokenizer.to_json(), writers

    def __call__(self, group: list[EncodeJob]) -> dict:
        tok = _tokenizer(self.tokenizer)
        made = [encode_unit(job, tok, self.writers) for job in group]
        return {s: sum(m[s] for m in made) for s in SPLITS}


def make_units(sources: list[src.Source], source_info: list[dict]) -> Iterator[Unit]:
    index = 0
    for s_i, source in enumerate(sources):
        if source.kind == "file" and src.archive_of_archives(source.path):

            def done(reader: src.HashingReader, info=source_info[s_i]) -> None:
                info["sha256"] = reader.sha256.hexdigest()

            try:
                for name, payload in src.archive_members(source.path, done):
                    yield Unit(index, s_i, name, len(payload), "bytes", payload=payload)
                    index += 1
            except src.DECODE_ERRORS as e:
                source_info[s_i]["error"] = describe_error(str(source.path), e)
            continue
        yield Unit(index, s_i, str(source.path), source_info[s_i]["bytes"], source.kind, path=str(source.path))
        index += 1


def prepare(inputs: list[str | Path], out: str | Path, opts: PrepareOptions) -> Summary:
    """Prepare `inputs` into the folder `out`; see the module docstring."""
    opts.validate()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.force:
        raise DataError(f"output folder {out} already exists and is not empty (use --force to replace it)")
    sources = src.discover(inputs)
    if not sources:
        raise DataError("no input files found in " + ", ".join(map(str, inputs)))
    t0 = time.perf_counter()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "work").mkdir(parents=True)
    try:
        with Workers(opts.workers or os.cpu_count() or 1) as workers:
            summary = _prepare_into(sources, tmp, opts, workers)
        shutil.rmtree(tmp / "work")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary.out, summary.seconds = out, time.perf_counter() - t0
    return summary


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _read_pass(sources: list[src.Source], work: Path, opts: PrepareOptions, workers: Workers) -> tuple[list[UnitResult], list[dict], list[str]]:
    warnings: list[str] = []
    source_info: list[dict] = []
    for s in sources:
        size, error = 0, None
        try:
            size = s.size
        except OSError as e:
            error = f"{s.path}: unreadable ({e.strerror})"
        source_info.append({"path": str(s.path), "bytes": size, "sha256": None, "documents": 0, "error": error})
    results: list[UnitResult] = []
    bar = tqdm(total=sum(i["bytes"] for i in source_info), unit="B", unit_scale=True, desc="reading", disable=not opts.progress, leave=False)
    units = grouped(make_units(sources, source_info), lambda u: u.size, GROUP_BYTES)
    for r in (r for group in workers.map(_Scan(work, opts), units) for r in group):
        bar.update(r.size)
        info = source_info[r.source]
        if r.error:
            if opts.strict:
                raise DataError(r.error + " (--strict)")
            info["error"] = info["error"] or r.error
        elif r.sha256:
            info["sha256"] = r.sha256
        results.append(r)
    bar.close()
    for info in source_info:
        if info["error"]:
            if opts.strict:
                raise DataError(info["error"] + " (--strict)")
            warnings.append(f"skipped {info['error']}")
    # a source with any failed unit is dropped whole, so no file contributes half its text
    bad = {i for i, info in enumerate(source_info) if info["error"]}
    results = [r for r in results if r.source not in bad]
    for r in results:
        source_info[r.source]["documents"] += len(r.docs_chars)
        warnings += [f"skipped member {m}" for m in r.skipped]
    return results, source_info, warnings


def _prepare_into(sources: list[src.Source], tmp: Path, opts: PrepareOptions, workers: Workers) -> Summary:
    work = tmp / "work"
    results, source_info, warnings = _read_pass(sources, work, opts, workers)
    n_docs = sum(len(r.docs_chars) for r in results)
    n_skipped = sum(1 for i in source_info if i["error"])
    if n_docs == 0:
        # the skip warnings are never shown when nothing is written: say why here
        reasons = [i["error"] for i in source_info if i["error"]]
        raise DataError("no text found in the inputs" + (f" ({len(reasons)} file(s) skipped as unusable; the first: {reasons[0]})" if reasons else ""))
    scratch = {r.index: ScratchReader(work / f"{r.index:07d}.cp", r.batches) for r in results}

    # split by document when there are enough documents on both sides, else inside the text
    n_val_docs = sum(int(r.docs_val.sum()) for r in results)
    doc_split = n_docs >= MIN_DOCS_FOR_DOCUMENT_SPLIT and 0 < n_val_docs < n_docs
    total = {s: np.zeros(N_CODEPOINTS, np.int64) for s in SPLITS}
    unit_counts, unit_segments = [], []
    for r in results:
        if doc_split:
            counts = r.counts
            segments = document_segments(r.docs_chars, r.docs_val, None)
        else:
            tails = np.round(r.docs_chars * opts.val_fraction).astype(np.int64)
            segments = document_segments(r.docs_chars, None, tails)
            counts = _recount_text_split(scratch[r.index], r, segments)
        for s in SPLITS:
            total[s][counts[s][0]] += counts[s][1]
        unit_counts.append(counts)
        unit_segments.append(segments)
    chars = {s: int(total[s].sum()) for s in SPLITS}
    if chars["train"] == 0 or chars["val"] == 0:
        raise DataError(f"the corpus is too small to split into train and val ({chars['train'] + chars['val']} characters)")

    # vocabulary from the training counts; byte tokens only if some character needs them,
    # so a clean corpus keeps a tiny vocabulary
    train_cps = np.flatnonzero(total["train"])
    val_only = bool((total["val"] * (total["train"] == 0)).any())
    vocab = build_vocab(train_cps, total["train"][train_cps], max_vocab=opts.max_vocab, min_count=opts.min_char_count, oov=opts.oov, others_outside=val_only)
    in_vocab = np.zeros(N_CODEPOINTS, bool)
    in_vocab[[ord(c) for c in vocab]] = True
    outside = bool(((total["train"] + total["val"]) * ~in_vocab).any())
    tokenizer = CharTokenizer(chars=vocab, oov=opts.oov if outside else "error")

    # exact token counts per unit and split give each unit its place in the shards
    jobs, running, split_docs = [], {s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}
    char_tokens = {s: tokens_per_unit(tokenizer, [c[s] for c in unit_counts]) for s in SPLITS}
    for i, (r, segments) in enumerate(zip(results, unit_segments)):
        n_val = int(np.count_nonzero(segments[0]))
        n_seg = {"train": len(segments[0]) - n_val, "val": n_val}
        expected = {s: int(char_tokens[s][i]) + n_seg[s] for s in SPLITS}
        jobs.append(EncodeJob(r.index, scratch[r.index], segments, dict(running), expected))
        for s in SPLITS:
            running[s] += expected[s]
            split_docs[s] += n_seg[s]
    writers = {s: SplitWriter(tmp, s, running[s], opts.shard_tokens, tokenizer.dtype) for s in SPLITS}
    for w in writers.values():
        w.create()
    bar = tqdm(total=sum(running.values()), unit="tok", unit_scale=True, desc="encoding", disable=not opts.progress, leave=False)
    for produced in workers.map(_Encode(tokenizer, writers), grouped(jobs, lambda j: j.chars, GROUP_CHARS)):
        bar.update(sum(produced.values()))
    bar.close()

    (tmp / TOKENIZER_FILE).write_text(tokenizer.to_json(), encoding="utf-8")
    meta = {
        "format": DATA_FORMAT,
        "version": DATA_VERSION,
        "tokenizer": TOKENIZER_FILE,
        "vocab_size": len(tokenizer),
        "dtype": tokenizer.dtype.name,
        "split_mode": "document" if doc_split else "text",
        "splits": {
            s: {"tokens": running[s], "documents": split_docs[s], "characters": chars[s], "shards": [p.name for p in writers[s].paths]}
            for s in SPLITS
        },
        "coverage": {
            **{s: float((total[s] * in_vocab).sum() / chars[s]) for s in SPLITS},
            "distinct_characters": int(((total["train"] + total["val"]) > 0).sum()),
            "vocabulary_characters": len(vocab),
            "byte_fallback": tokenizer.oov == "byte",
            "unknown_token": tokenizer.oov == "unk",
        },
        "sources": source_info,
        "skipped": {
            "files": n_skipped,
            "members": sum(len(r.skipped) for r in results),
            "invalid_utf8_replaced": sum(r.invalid_utf8 for r in results),
        },
        "options": {k: v for k, v in asdict(opts).items() if k not in ("workers", "force", "progress")},
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    all_cps = np.flatnonzero(total["train"] + total["val"])
    text_bytes = int(((total["train"] + total["val"])[all_cps] * utf8_length(all_cps)).sum())
    return Summary(out=tmp, meta=meta, seconds=0.0, text_bytes=text_bytes, warnings=warnings)


def tokens_per_unit(tokenizer: CharTokenizer, counts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Tokens the characters of each unit encode to, given its (code points, counts): the
    tokenizer's token_lengths for every unit in one go."""
    sizes = np.array([len(cps) for cps, _ in counts], np.int64)
    if not sizes.sum():
        return np.zeros(len(counts), np.int64)
    cps = np.concatenate([cps for cps, _ in counts])
    n = np.concatenate([n for _, n in counts]).astype(np.int64)
    running = np.concatenate(([0], np.cumsum(tokenizer.tokens_per_char(cps) * n)))
    ends = np.cumsum(sizes)
    return running[ends] - running[ends - sizes]


def _recount_text_split(scratch: ScratchReader, r: UnitResult, segments: tuple[np.ndarray, np.ndarray]) -> dict:
    """Per-split counts when documents are split inside: count the val tails, subtract."""
    whole = np.zeros(N_CODEPOINTS, np.int64)
    for s in SPLITS:
        whole[r.counts[s][0]] += r.counts[s][1]
    val = np.zeros(0, np.int64)
    start = 0
    for split, n in segment_list(segments):
        if split == "val":
            for block in scratch.blocks(start, n):
                val = add_counts(val, np.bincount(block))
        start += n
    whole[: len(val)] -= val
    return {"train": sparse(whole), "val": sparse(val)}
