"""Where a document may be cut without changing its BPE ids, so that any document, however
long, is encoded (and learned from) in pieces of bounded size.

A byte-level BPE never merges across the words its pre-tokenizer splits the text into
(GPT-2's expression: `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`).
Before a single space or newline that has a non-space character on each side there is always
a word boundary, in the whole text and in both parts alike: no word holds a space except at
its start or among spaces only, and the one look-ahead, `(?!\\S)`, only ever sees a space run
end, which here ends on a non-space character on both sides of the cut. So cutting there gives
exactly the ids of the whole. Which characters count as spaces is taken wider than the
expression's `\\s` (Python's too), so every cut is safe whatever the doubt.

A stretch longer than `limit` with no such place (a megabyte of one unbroken line of CJK, say)
is cut where it must be; only there can the ids differ from the library's on the whole text.
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator

SPACES = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u180e\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
CUT = re.compile(f"(?<=[^{SPACES}])[ \\n](?=[^{SPACES}])")
TARGET = 1 << 16  # characters a piece aims at: many pieces fill one batch of the encoder
LIMIT = 1 << 20  # the most a piece holds, a cut found or not


def last_cut(text: str, lo: int, hi: int) -> int | None:
    """The last safe cut in text[lo:hi + 1] (the piece before it ends at the cut), searched
    backwards in growing windows: text usually has one within a line's length."""
    width = 4096
    while True:
        start = max(lo, hi - width)
        found = [m.start() for m in CUT.finditer(text, start, min(len(text), hi + 2)) if m.start() <= hi]
        if found:
            return found[-1]
        if start == lo:
            return None
        width *= 4


def cut_point(text: str, start: int, target: int = TARGET, limit: int = LIMIT) -> int | None:
    """Where the piece beginning at `start` ends: the last cut up to `target` characters on,
    else the first after it, up to `limit`; None while none is in sight and more text may come."""
    cut = last_cut(text, start + 1, min(len(text), start + target))
    if cut is None:
        m = CUT.search(text, start + target + 1, min(len(text), start + limit + 2))
        cut = m.start() if m and m.start() <= start + limit else None
    if cut is None and len(text) - start > limit:
        cut = start + limit  # no safe place in a whole piece: cut anyway
    return cut


def safe_pieces(texts: Iterable[str], target: int = TARGET, limit: int = LIMIT) -> Iterator[str]:
    """One document's text, arriving in chunks of any size, as pieces of at most `limit`
    characters cut only where the BPE ids do not change (see the module docstring)."""
    rest = ""
    for text in texts:
        buf, start = (rest + text if rest else text), 0
        while len(buf) - start > target:
            cut = cut_point(buf, start, target, limit)
            if cut is None:
                break
            yield buf[start:cut]
            start = cut
        rest = buf[start:]
    if rest:
        yield rest
