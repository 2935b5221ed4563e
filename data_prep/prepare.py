"""`prepare()`: corpus -> documents -> vocabulary -> train/val token shards.

Pass 1 (parallel; the expensive part for characters: decompression and parsing,
`passes.pass1_read`) reads each unit of work (a file, or one member of an archive of
archives), stores its documents' code points in a code point file and returns per-split
character counts. The tokenizer comes next: a character vocabulary built from the training
counts (`tokenize.char_vocabulary`), or a byte-level BPE learned from the training text
(`tokenize.bpe_training`), or a base's (--vocab-from, `tokenize.vocab_from`). Pass 2
(parallel, `passes.pass2_char`) counts every unit's tokens per split, which gives its place
in the shards, then writes its ids there: for characters the counts come from pass 1's and
the ids from a numpy lookup; a BPE encodes each unit first and copies its ids into place
after (`passes.pass2_bpe`). All of it happens in a hidden temporary folder that is renamed
into place only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plumbing.errors import display_name, first_line
from plumbing.output_folder import (
    OutputFolderError,
    Writer,
    check_output,
    check_replaceable,
    claim,
    clean_after_killed_runs,
    first_inside,
    move_into_place,
    parents_removed_on_failure,
)

from .errors import DataError
from .options import PrepareOptions
from .passes.pass1_read import Scan, make_units
from .passes.pass1_totals import Tally
from .passes.pass2_bpe import BpePass
from .passes.pass2_char import CharPass, EncodeJob
from .passes.segments import LearnBpe, recount_text_split, segment_counts, summed
from .passes.workers import GROUP_BYTES, GROUP_CHARS, UNIT_COST, Workers, grouped
from .prepared.data_folder import META_FILE, SPLITS, is_prepared_data, prepared_entries
from .prepared.meta import build_meta
from .prepared.shards import SplitWriter
from .progress import progress_bar
from .read.inputs import Source, check_exist, discover
from .read.records import work_offline
from .tokenize.char import Totals, utf8_length
from .tokenize.char_vocabulary import build_tokenizer
from .tokenize.kinds import Tokenizer, tokenizer_from_json
from .tokenize.tokenizer_file import TOKENIZER_FILE
from .tokenize.vocab_from import load_base_tokenizer

__all__ = ["PrepareOptions", "Summary", "prepare"]

MIN_DOCS_FOR_DOCUMENT_SPLIT = 100  # fewer documents than this: split inside the text
# --force replaces a data folder gpt-prepare wrote, never a trained run or anything else the user had
PREPARER = Writer("gpt-prepare", wrote=is_prepared_data, entries=prepared_entries)


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
    check_exist(inputs)  # a mistyped input before anything about the output
    out = Path(os.path.abspath(out))  # the new folder is written beside it: ".." has no name to write beside
    try:
        check_replaceable(out)
        clean_after_killed_runs(out)
    except OutputFolderError as e:  # gpt-prepare's expected failures are DataErrors, whoever finds them
        raise DataError(str(e)) from None
    check_not_an_input(out, [*inputs, *([opts.vocab_from] if opts.vocab_from else [])])
    check_output(out, opts.force, PREPARER, DataError)
    base = load_base_tokenizer(opts.vocab_from) if opts.vocab_from else None  # a bad base fails before any work
    sources = discover(inputs, exclude=out)
    if not sources:
        raise DataError("no input files found in " + ", ".join(map(display_name, inputs)))
    work_offline()
    t0 = time.perf_counter()
    with parents_removed_on_failure(out):
        try:
            tmp = claim(out)
        except OutputFolderError as e:  # another run is writing `out`
            raise DataError(str(e)) from None
        except OSError as e:
            reason = e.strerror or first_line(e)
            raise DataError(f"cannot write the output folder {display_name(out)}: {reason}") from None
        try:
            (tmp / "work").mkdir()
            with Workers(opts.workers or os.cpu_count() or 1) as workers:
                summary = _prepare_into(sources, tmp, opts, workers, base)
            shutil.rmtree(tmp / "work")
            # a folder made there while this run worked is the user's, as one at the start
            check_output(out, opts.force, PREPARER, DataError)
            move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    summary.out, summary.seconds = out, time.perf_counter() - t0
    return summary


def check_not_an_input(out: Path, inputs: list[str | Path]) -> None:
    """Refuse an output folder that is, or holds, one of the inputs (or the --vocab-from
    base): replacing it (with --force) would delete the corpus it was made from."""
    given = first_inside(out, inputs)
    if given is not None:
        raise DataError(f"--out {display_name(out)} would replace the input {display_name(given)}; "
                        "choose an output folder that holds no input (one inside an input folder is fine)")


def _read_pass(sources: list[Source], work: Path, opts: PrepareOptions, workers: Workers) -> tuple[Tally, list[str]]:
    tally = Tally(sources, opts.strict)
    bar = progress_bar(sum(i["bytes"] for i in tally.sources), "B", "reading", None if opts.progress else False)
    units = grouped(make_units(sources, tally.sources, work), lambda u: u.size + UNIT_COST, GROUP_BYTES)
    for group in workers.map(Scan(work, opts), units):
        for r in group:
            bar.update(r.size)
            tally.add(r)
    bar.close()
    return tally, tally.finish()


def _prepare_into(sources: list[Source], tmp: Path, opts: PrepareOptions, workers: Workers,
                  base: Tokenizer | None) -> Summary:
    tally, warnings = _read_pass(sources, tmp / "work", opts, workers)
    split = _plan_split(tally, opts, warnings)
    tokenizer, in_vocab = _tokenizer(split.units, split.total, split.val_tails, opts, workers, base)
    tokens, documents, shards = _write_shards(split, tokenizer, tmp, opts, workers)
    (tmp / TOKENIZER_FILE).write_text(tokenizer.to_json(), encoding="utf-8")
    skipped = {"files": sum(1 for i in tally.sources if i["error"]), "members": len(tally.skipped_members),
               "invalid_utf8_replaced": tally.invalid_utf8}
    if tally.bad_records:  # only when there are some: other corpora's meta.json stays as it was
        skipped["bad_records"] = tally.bad_records
    meta = build_meta(
        tokenizer, opts, doc_split=split.val_tails is None, tokens=tokens, documents=documents, shards=shards,
        total=split.total, in_vocab=in_vocab, sources=tally.sources, skipped=skipped,
    )
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    seen = split.total.seen
    text_bytes = int((sum(split.total[s][seen] for s in SPLITS) * utf8_length(seen)).sum())
    return Summary(out=tmp, meta=meta, seconds=0.0, text_bytes=text_bytes, warnings=warnings)


@dataclass
class Split:
    """How the corpus divides into train and val: by whole documents (`val_tails` None), or
    inside the text, where each unit gives the tail `val_tails` of its text to val."""
    units: list  # pass 1's results for the units that hold documents
    val_tails: float | None
    unit_counts: list | None  # per unit, its characters per split (a split inside the text only)
    total: Totals  # per split, the count of each code point


def _plan_split(tally: Tally, opts: PrepareOptions, warnings: list[str]) -> Split:
    units = [r for r in tally.units if r.documents]
    n_docs = sum(r.documents for r in units)
    if n_docs == 0:
        # the skip warnings are never shown when nothing is written: say why here
        reasons = [i["error"] for i in tally.sources if i["error"]]
        empty = [i["path"] for i in tally.sources if not i["bytes"]]
        if reasons:
            why = f" ({len(reasons)} file(s) skipped as unusable; the first: {reasons[0]})"
        elif len(empty) == len(tally.sources):
            why = (f": {empty[0]} is empty (0 bytes)" if len(empty) == 1
                   else f": all {len(empty)} input files are empty (0 bytes)")
        else:
            why = ""
        raise DataError("no text found in the inputs" + why)
    # split by document when there are enough documents on both sides, else inside the text
    n_val_docs = sum(r.val_documents for r in units)
    if n_docs >= MIN_DOCS_FOR_DOCUMENT_SPLIT and 0 < n_val_docs < n_docs:
        split = Split(units, None, None, tally.totals)
    else:
        if n_docs >= MIN_DOCS_FOR_DOCUMENT_SPLIT:
            none = n_val_docs == 0
            warnings.append(f"{'none' if none else 'all'} of the {n_docs:,} documents went to val at --val-fraction "
                            f"{opts.val_fraction:g}; split inside each document instead, so train and val share "
                            f"documents (a larger corpus or a {'larger' if none else 'smaller'} --val-fraction "
                            "splits by document)")
        unit_counts = [recount_text_split(r.scratch, opts.val_fraction) for r in units]
        split = Split(units, opts.val_fraction, unit_counts, summed(unit_counts))
    chars = {s: int(split.total[s][split.total.seen].sum()) for s in SPLITS}
    if chars["train"] == 0 or chars["val"] == 0:
        raise DataError(f"the corpus is too small to split into train and val at --val-fraction {opts.val_fraction:g} "
                        f"({chars['train'] + chars['val']:,} characters, {chars['val']:,} of them for val); give a "
                        "larger --val-fraction")
    return split


def _write_shards(split: Split, tokenizer: Tokenizer, tmp: Path, opts: PrepareOptions,
                  workers: Workers) -> tuple[dict, dict, dict]:
    """Pass 2: every unit's tokens into its place in the shards. Returns the tokens and the
    documents (segments) per split, and the shards' file names."""
    # exact token counts per unit and split give each unit its place in the shards
    n_seg = segment_counts(split.units, split.val_tails)
    pass2 = BpePass(tokenizer) if tokenizer.kind == "bpe" else CharPass(tokenizer)
    # a BPE's count frees the code point files
    expected = pass2.count(split.units, n_seg, split.unit_counts, split.val_tails, workers, opts.progress)
    tokens = {s: int(expected[s].sum()) for s in SPLITS}
    writers = {s: SplitWriter(tmp, s, tokens[s], opts.shard_tokens, tokenizer.dtype) for s in SPLITS}
    for w in writers.values():
        w.create()
    starts = {s: np.cumsum(expected[s]) - expected[s] for s in SPLITS}
    jobs = (
        EncodeJob(r.index, r.scratch, split.val_tails, {s: int(starts[s][i]) for s in SPLITS},
                  {s: int(expected[s][i]) for s in SPLITS})
        for i, r in enumerate(split.units)
    )
    bar = progress_bar(sum(tokens.values()), "tok", pass2.writing, None if opts.progress else False)
    for produced in workers.map(pass2.writer(writers), grouped(jobs, lambda j: j.chars + UNIT_COST, GROUP_CHARS)):
        bar.update(sum(produced.values()))
    bar.close()
    documents = {s: int(n.sum()) for s, n in n_seg.items()}
    return tokens, documents, {s: [p.name for p in writers[s].paths] for s in SPLITS}


def _tokenizer(units: list, total: Totals, val_tails: float | None, opts: PrepareOptions, workers: Workers,
               base: Tokenizer | None) -> tuple[Tokenizer, np.ndarray | None]:
    """The tokenizer, and (for a character vocabulary) which code points it holds: a base's as
    it is, a BPE learned from the training text, or characters from the training counts."""
    if base is not None and base.kind == "bpe":
        return base, None
    if base is None and opts.tokenizer == "bpe":
        train_chars = int(total["train"].sum())
        learn = LearnBpe(val_tails, opts.vocab_size, train_chars if opts.progress else None)
        learned = workers.run(learn, [r.scratch for r in units])
        return tokenizer_from_json(learned), None
    return build_tokenizer(total, opts, base)
