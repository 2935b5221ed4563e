"""Finding the inputs: the files under the paths given, in a stable order."""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from plumbing.errors import display_name

from ..errors import DataError
from ..prepared.data_folder import is_prepared_data


@dataclass
class Source:
    """One input named on the command line or found in a folder."""

    path: Path
    kind: str  # "file" or "saved" (a datasets save_to_disk folder)

    @property
    def name(self) -> str:
        return display_name(self.path)

    @property
    def size(self) -> int:
        if self.kind == "saved":
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size


def is_saved_dataset(folder: Path) -> bool:
    """Whether `folder` is a datasets save_to_disk folder (False for one that cannot be looked
    into: listing it then says why)."""
    try:
        return (folder / "dataset_dict.json").is_file() or (
            (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
        )
    except OSError:  # a folder without the permission to look inside
        return False


def check_exist(paths: list[str | Path]) -> None:
    """Refuse an input that is not there: a mistyped path is said as such, first."""
    for given in paths:
        if not Path(given).exists():
            raise DataError(f"input path does not exist: {display_name(Path(given))}")


def discover(paths: list[str | Path], exclude: Path | None = None) -> list[Source]:
    """Every input file under `paths`, folders searched recursively, in a stable order so
    the same inputs always give the same output. Hidden entries (gpt-prepare's own
    `.OUT.partial-PID` folders among them), prepared data folders and `exclude` (the output
    folder) are left out of the search."""
    found: list[Source] = []
    skip = os.path.realpath(exclude) if exclude is not None else None
    check_exist(paths)
    for given in paths:
        p = Path(given)
        if p.is_dir():
            if is_prepared_data(p):
                raise DataError(f"{display_name(p)} is a prepared data folder (gpt-prepare's output), not a corpus: "
                                "give the text it was prepared from")
            if is_saved_dataset(p):
                found.append(Source(p, "saved"))
                continue
            for root, dirs, files in os.walk(p, onerror=unlisted):
                rootp = Path(root)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _left_out(rootp / d, skip)
                                 and not linked_folder(rootp / d))
                for d in list(dirs):
                    if is_saved_dataset(rootp / d):
                        found.append(Source(rootp / d, "saved"))
                        dirs.remove(d)
                for f in sorted(files):
                    if f.startswith("."):
                        continue
                    if readable_twice(rootp / f):
                        found.append(Source(rootp / f, "file"))
                    else:
                        warnings.warn(f"skipped {display_name(rootp / f)}: a pipe or a device, not a file")
        elif not readable_twice(p):
            raise DataError(f"{display_name(p)} is a pipe or a device, not a file: gpt-prepare reads each input more "
                            "than once; save its content to a file first")
        else:
            found.append(Source(p, "file"))
    return each_once(found)


def each_once(found: list[Source]) -> list[Source]:
    """Each file read once, where it is first found: one given twice, inside a folder also
    given, or reached again through a link (a hard link is the same file too) would be read
    twice, its documents doubled in the corpus. Said in one warning."""
    first: dict = {}
    kept, again = [], []
    for source in found:
        try:
            st = os.stat(source.path)
            key = (st.st_dev, st.st_ino)
        except OSError:  # reading it says why
            key = os.path.realpath(source.path)
        if key in first:
            again.append((source, first[key]))
        else:
            first[key] = source
            kept.append(source)
    if again:
        source, earlier = again[0]
        more = f"; {len(again) - 1} more like it" if len(again) > 1 else ""
        warnings.warn(f"read once: {source.name} is {earlier.name} again (given twice, inside a folder also given, "
                      f"or a link){more}")
    return kept


def unlisted(e: OSError) -> None:
    """A folder inside an input whose entries cannot be read: skipped with a warning, as an
    unreadable file is."""
    warnings.warn(f"skipped the folder {display_name(e.filename)}: {e.strerror or 'cannot be read'}")


def linked_folder(folder: Path) -> bool:
    """A link to a folder, inside an input: not followed (it may lead outside the corpus, or
    back up into it), and said, so that no folder is left out unseen."""
    if not folder.is_symlink():
        return False
    warnings.warn(f"skipped {display_name(folder)}: a link to a folder, not followed (give it as an input to read it)")
    return True


def readable_twice(path: Path) -> bool:
    """Whether `path` can be read again from its start, as both passes do: a regular file,
    a link to one, or a path that cannot be looked at (reading it then reports why). A pipe
    or a device cannot, and opening a pipe with no writer would wait forever."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True


def _left_out(folder: Path, output: str | None) -> bool:
    return (output is not None and os.path.realpath(folder) == output) or is_prepared_data(folder)
