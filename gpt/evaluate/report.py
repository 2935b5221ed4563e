"""How results are shown: one table for one or several runs (plain text), or JSON."""
from __future__ import annotations

import json

from .evaluate import RunScore

OOV_SHOWN = 5  # characters outside the vocabulary named in a note


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.2f}{suffix}"
    return str(n)


def human_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def table(results: list[RunScore]) -> str:
    """The text's description, then one row per run (the best bits per character marked
    when there are several), then notes on characters outside each vocabulary and on
    anything skipped while reading."""
    first = results[0].stream
    lines = [f"text: {first.description} ({first.characters_read:,} characters)"]
    head = ("run", "parameters", "tokens seen", "trained", "context/stride", "tokens scored", "bits/char", "nats/token",
            "perplexity")
    best = min(r.score.bits_per_char for r in results)
    rows = [head]
    for r in results:
        mark = " *" if len(results) > 1 and r.score.bits_per_char == best else ""
        rows.append((r.run.name, human_count(r.run.parameters), human_count(r.run.tokens_seen),
                     human_time(r.run.training_time), f"{r.run.context}/{r.stride}", f"{r.score.tokens:,}",
                     f"{r.score.bits_per_char:.4f}{mark}",
                     f"{r.score.nats_per_token:.4f}", f"{r.score.perplexity:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for i, row in enumerate(rows):
        cells = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if len(results) > 1:
        lines.append("* lowest bits per character")
    lines += notes(results)
    return "\n".join(lines)


def notes(results: list[RunScore]) -> list[str]:
    out = []
    for r in results:
        s = r.stream
        if s.oov_characters:
            named = ", ".join(f"{c!r} x{n}" for c, n in s.oov_examples.most_common(OOV_SHOWN))
            more = ", ..." if len(s.oov_examples) > OOV_SHOWN else ""
            how = {"byte": "scored as their UTF-8 byte tokens",
                   "unk": "scored as the unknown token (which flatters the score)",
                   "error": "left out of the score (the vocabulary has no fallback)"}[r.run.tokenizer.oov]
            share = s.oov_characters / max(s.characters_read, 1)
            out.append(f"{r.run.name}: {s.oov_characters:,} characters outside the vocabulary ({share:.2%}), "
                       f"{how}: {named}{more}")
    s = results[0].stream
    if s.notes.skipped:
        out.append(f"skipped {len(s.notes.skipped)} file(s) or member(s): "
                   f"{s.notes.skipped[0]}{', ...' if len(s.notes.skipped) > 1 else ''}")
    if s.notes.bad_records:
        out.append(f"skipped {s.notes.bad_records:,} record(s) without text (not a JSON object, no such field, or a "
                   "value that is not a string), as gpt-prepare does")
    if s.notes.invalid_utf8:
        out.append(f"{s.notes.invalid_utf8:,} invalid UTF-8 sequence(s) were read as U+FFFD")
    return out


def as_json(results: list[RunScore]) -> str:
    first = results[0].stream
    runs = []
    for r in results:
        s = r.stream
        runs.append({
            "run": r.run.name, "checkpoint": str(r.run.checkpoint), "quantize": r.run.quantize,
            "parameters": r.run.parameters,
            "tokens_seen": r.run.tokens_seen, "training_time_s": r.run.training_time, "step": r.run.step,
            "context": r.run.context, "stride": r.stride,
            "characters": r.score.characters, "tokens": r.score.tokens, "nats": r.score.nats,
            "bits_per_char": r.score.bits_per_char, "nats_per_token": r.score.nats_per_token,
            "perplexity": r.score.perplexity,
            "oov_characters": s.oov_characters, "oov_mode": r.run.tokenizer.oov,
            "oov_examples": dict(s.oov_examples.most_common(OOV_SHOWN)),
        })
    text = {"description": first.description, "characters": first.characters_read, "documents": first.notes.documents,
            "skipped": first.notes.skipped, "bad_records": first.notes.bad_records,
            "invalid_utf8": first.notes.invalid_utf8}
    return json.dumps({"text": text, "runs": runs}, indent=1, ensure_ascii=False)
