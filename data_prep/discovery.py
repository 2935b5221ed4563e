"""Finding the inputs: the files under the paths given, in a stable order."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError


@dataclass
class Source:
    """One input named on the command line or found in a folder."""

    path: Path
    kind: str  # "file" or "datasets" (a save_to_disk folder)

    @property
    def size(self) -> int:
        if self.kind == "datasets":
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size


def is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def discover(paths: list[str | Path]) -> list[Source]:
    """Every input file under `paths`, folders searched recursively (hidden entries
    skipped), in a stable order so the same inputs always give the same output."""
    found: list[Source] = []
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise DataError(f"input path does not exist: {p}")
        if p.is_dir():
            if is_saved_dataset(p):
                found.append(Source(p, "datasets"))
                continue
            for root, dirs, files in os.walk(p):
                rootp = Path(root)
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for d in list(dirs):
                    if is_saved_dataset(rootp / d):
                        found.append(Source(rootp / d, "datasets"))
                        dirs.remove(d)
                found += [Source(rootp / f, "file") for f in sorted(files) if not f.startswith(".")]
        else:
            found.append(Source(p, "file"))
    return found
