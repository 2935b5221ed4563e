"""`prepare()`: corpus -> documents -> vocabulary -> train/val token shards.

Pass 1 (parallel; the expensive part: decompression and parsing, `scan`) reads each unit of
work (a file, or one member of an archive of archives), stores its documents' code points
in a scratch file and returns per-split character counts. The vocabulary is built from the
training counts; the counts also give every unit's exact token count, hence its place in
each split. Pass 2 (parallel, pure numpy, `encode`) maps the scratch code points to ids
and writes them straight into their place in the shards. All of it happens in a hidden
temporary folder that is renamed into place only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .dataset import META_FILE, SPLITS, TOKENIZER_FILE
from .discovery import Source, discover
from .encode import N_CODEPOINTS, Encode, EncodeJob, document_segments, recount_text_split, tokens_per_unit
from .errors import DataError
from .meta import build_meta
from .options import PrepareOptions
from .records import work_offline
from .scan import Scan, UnitResult, make_units, scratch_path
from .scratch import ScratchReader
from .shards import SplitWriter
from .tokenizer import CharTokenizer, build_vocab, utf8_length
from .workers import Workers, grouped

__all__ = ["PrepareOptions", "Summary", "prepare"]

MIN_DOCS_FOR_DOCUMENT_SPLIT = 100  # fewer documents than this: split inside the text
GROUP_BYTES = 1 << 20  # pass-1 units go to a worker in groups of about this much input
GROUP_CHARS = 1 << 21  # and pass-2 units in groups of about this many characters (a short tail)


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


def prepare(inputs: list[str | Path], out: str | Path, opts: PrepareOptions) -> Summary:
    """Prepare `inputs` into the folder `out`; see the module docstring."""
    opts.validate()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not opts.force:
        raise DataError(f"output folder {out} already exists and is not empty (use --force to replace it)")
    sources = discover(inputs)
    if not sources:
        raise DataError("no input files found in " + ", ".join(map(str, inputs)))
    work_offline()
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


def _read_pass(sources: list[Source], work: Path, opts: PrepareOptions, workers: Workers) -> tuple[list[UnitResult], list[dict], list[str]]:
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
    for r in (r for group in workers.map(Scan(work, opts), units) for r in group):
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


def _prepare_into(sources: list[Source], tmp: Path, opts: PrepareOptions, workers: Workers) -> Summary:
    work = tmp / "work"
    results, source_info, warnings = _read_pass(sources, work, opts, workers)
    n_docs = sum(len(r.docs_chars) for r in results)
    n_skipped = sum(1 for i in source_info if i["error"])
    if n_docs == 0:
        # the skip warnings are never shown when nothing is written: say why here
        reasons = [i["error"] for i in source_info if i["error"]]
        raise DataError("no text found in the inputs" + (f" ({len(reasons)} file(s) skipped as unusable; the first: {reasons[0]})" if reasons else ""))
    scratch = {r.index: ScratchReader(scratch_path(work, r.index), r.batches) for r in results}

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
            counts = recount_text_split(scratch[r.index], r.counts, segments)
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
    for produced in workers.map(Encode(tokenizer, writers), grouped(jobs, lambda j: j.chars, GROUP_CHARS)):
        bar.update(sum(produced.values()))
    bar.close()

    (tmp / TOKENIZER_FILE).write_text(tokenizer.to_json(), encoding="utf-8")
    skipped = {
        "files": n_skipped,
        "members": sum(len(r.skipped) for r in results),
        "invalid_utf8_replaced": sum(r.invalid_utf8 for r in results),
    }
    meta = build_meta(
        tokenizer, opts, doc_split=doc_split, tokens=running, documents=split_docs,
        shards={s: [p.name for p in writers[s].paths] for s in SPLITS}, total=total, in_vocab=in_vocab,
        sources=source_info, skipped=skipped,
    )
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    all_cps = np.flatnonzero(total["train"] + total["val"])
    text_bytes = int(((total["train"] + total["val"])[all_cps] * utf8_length(all_cps)).sum())
    return Summary(out=tmp, meta=meta, seconds=0.0, text_bytes=text_bytes, warnings=warnings)
