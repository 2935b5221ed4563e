"""What the main process keeps of pass 1 (`Tally`): per-split character totals, merged as
results arrive; every source's line in meta.json; and a few numbers per unit of work (its
code point file's index), never a unit's per-document or per-character arrays."""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..prepared.data_folder import SPLITS
from ..read.inputs import Source
from ..tokenize.char import N_CODEPOINTS, Totals
from .pass1_read import UnitResult


class Tally:
    def __init__(self, sources: list[Source], strict: bool):
        self.strict = strict
        self.totals = {s: np.zeros(N_CODEPOINTS, np.int64) for s in SPLITS}  # by document hash
        self.units: list[UnitResult] = []
        self.sources: list[dict] = []
        self.skipped_members: list[str] = []
        self.invalid_utf8 = self.bad_records = 0
        for s in sources:
            size, error = 0, None
            try:
                size = s.size
            except OSError as e:
                error = f"{s.name}: unreadable ({e.strerror})"
            self.sources.append({"path": s.name, "bytes": size, "sha256": None, "documents": 0, "error": error})
        # a source's counts are held until its last unit is in and it has not failed (an
        # archive of archives, many units, can fail partway): as its units' sparse counts,
        # or, past a few units, summed in dense arrays
        self.current, self.held, self.dense = -1, [], None

    def add(self, r: UnitResult) -> None:
        if r.source != self.current:
            self._commit()
            self.current = r.source
        info = self.sources[r.source]
        if r.error:
            if self.strict:
                raise DataError(r.error + " (--strict)")
            info["error"] = info["error"] or r.error
        if r.sha256:
            info["sha256"] = r.sha256
        if r.counts is not None:
            self._hold(r.counts)
            r.counts = None
        self.units.append(r)

    def _hold(self, counts: dict) -> None:
        if self.dense is None and len(self.held) < 16:
            self.held.append(counts)
            return
        if self.dense is None:
            self.dense = {s: np.zeros(N_CODEPOINTS, np.int64) for s in SPLITS}
        for c in [*self.held, counts]:
            for s in SPLITS:
                self.dense[s][c[s][0]] += c[s][1]
        self.held = []

    def _commit(self) -> None:
        if self.current >= 0 and not self.sources[self.current]["error"]:
            for s in SPLITS:
                for c in self.held:
                    self.totals[s][c[s][0]] += c[s][1]
                if self.dense is not None:
                    self.totals[s] += self.dense[s]
        self.held, self.dense = [], None

    def finish(self) -> list[str]:
        """Drop the units of failed sources (no file contributes half its text); the
        warnings to show."""
        self._commit()
        warnings = []
        for info in self.sources:
            if info["error"]:
                if self.strict:
                    raise DataError(info["error"] + " (--strict)")
                warnings.append(f"skipped {info['error']}")
        bad = {i for i, info in enumerate(self.sources) if info["error"]}
        self.units = [r for r in self.units if r.source not in bad]
        # the counts end at the largest code point counted: what follows asks them whole a
        # few times (sums, the characters present), and all of Unicode is 1.1 M entries
        top = max((r.max_codepoint for r in self.units), default=0)
        self.totals = Totals({s: t[: top + 1] for s, t in self.totals.items()})
        for r in self.units:
            self.sources[r.source]["documents"] += r.documents
            self.skipped_members += r.skipped
            self.invalid_utf8 += r.invalid_utf8
            self.bad_records += r.bad_records
        warnings += [f"skipped member {m}" for m in self.skipped_members]
        if self.bad_records:
            warnings.append(f"skipped {self.bad_records} record(s) without text (not a JSON object, no such "
                            "field, or a value that is not a string)")
        return warnings
