"""An output folder replaced whole or not at all, for every command that writes one
(gpt-prepare's data folder, gpt-export's, gpt-prune's): it is written beside its place as
`.OUT.partial-PID` and renamed into place when complete; an old folder is set aside as
`.OUT.old-PID` for the swap and removed after it. What a killed run (kill -9, a power cut)
left beside the folder is cleaned up by the next run."""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .atomic import sync_folder, sync_tree
from .errors import UserError, display_name


class OutputFolderError(UserError):
    """An output folder that cannot be written or replaced: in use, a file, not empty."""


def claim(out: Path) -> Path:
    """This process's unfinished copy of `out`, created empty, where it writes the new
    folder. Refused while another process writes `out`: the one to finish last would
    replace the other's output. Two processes that start together may both be refused;
    neither loses anything."""
    clean_after_killed_runs(out)
    busy(out)
    tmp = beside(out, "partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:  # a file above, a read-only place: named as the --out given, not as the hidden copy
        e.filename = display_name(out)
        raise
    try:
        busy(out)
    except OutputFolderError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def beside(out: Path, kind: str) -> Path:
    """This process's `.OUT.KIND-PID` folder beside `out` (KIND: partial or old)."""
    return out.parent / f".{beside_stem(out)}.{kind}-{os.getpid()}"


def for_the_user(path: str | Path) -> str:
    """`path` as the user knows it: a file inside an unfinished copy (`.OUT.partial-PID/...`)
    is named as the output folder OUT, the one the user gave (a full disk is theirs to free,
    a hidden work file is not theirs to look for)."""
    if not isinstance(path, (str, os.PathLike)):  # an OSError's filename may be bytes, or a descriptor
        return str(path)
    parts = Path(os.path.abspath(path)).parts
    for i, part in enumerate(parts):
        match = re.fullmatch(r"\.(.+)\.partial-\d+", part)
        if match:
            return display_name(Path(*parts[:i], match.group(1)))
    return display_name(path)


def beside_stem(out: Path) -> str:
    """OUT in the names of the folders beside it: its name, or where that leaves no room
    for the rest within a file name's 255 bytes, its start and a hash of the whole name."""
    if len(os.fsencode(out.name)) <= 200:
        return out.name
    digest = hashlib.sha256(os.fsencode(out.name)).hexdigest()[:16]
    return os.fsdecode(os.fsencode(out.name)[:120]) + "~" + digest  # a character cut in two round-trips as its bytes


def missing_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, nearest first: those that creating
    `path` with its parents would make."""
    missing = []
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (nearest first, as `missing_parents` lists them) while they are
    empty: what a failed run made above its output, unless something was put there meanwhile."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextmanager
def parents_removed_on_failure(path: Path) -> Iterator[None]:
    """A run that fails leaves no trace: not even the folders it made above `path`."""
    made = missing_parents(path)
    try:
        yield
    except BaseException:
        remove_empty(made)
        raise


def checked_output(out: str | Path, force: bool, writer: "Writer", error: type[Exception] = OutputFolderError) -> Path:
    """`out` as an absolute path (the new folder is written beside it: ".." has no name to
    write beside), checked before any work: renaming can replace it, what a killed run left
    beside it is cleaned up, and nothing is there that `force` may not replace."""
    out = Path(os.path.abspath(out))
    check_replaceable(out)
    clean_after_killed_runs(out)
    check_output(out, force, writer, error)
    return out


@contextmanager
def new_folder(out: Path, force: bool, writer: "Writer", error: type[Exception] = OutputFolderError) -> Iterator[Path]:
    """The unfinished copy of `out` to write into (`claim`), moved into place when the block
    ends and removed if it fails, with the folders made above `out`. A folder made at `out`
    meanwhile is the user's, as one at the start, and is refused (`check_output`)."""
    with parents_removed_on_failure(out):
        tmp = claim(out)
        try:
            yield tmp
            check_output(out, force, writer, error)
            move_into_place(tmp, out)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.filename is None:
                e.filename = display_name(out)  # a write that failed (a full disk) names the folder it was for
            raise


def busy(out: Path) -> None:
    for p, kind, pid in leftovers(out):
        if kind == "partial" and pid != os.getpid() and process_exists(pid):
            raise OutputFolderError(f"another process (pid {pid}) is writing {display_name(out)}; "
                                    f"wait for it to finish (or, if that process is none of this toolkit's commands, "
                                    f"remove {display_name(p)})")


def leftovers(out: Path) -> list[tuple[Path, str, int]]:
    """The unfinished copies (`partial`) and set-aside folders (`old`) beside `out`, with the
    process id that made each."""
    found = []
    stem = beside_stem(out)
    for p in out.parent.glob(f".{glob.escape(stem)}.*-*"):
        kind, _, pid = p.name[len(stem) + 2 :].rpartition("-")
        if kind in ("partial", "old") and pid.isdigit():
            found.append((p, kind, int(pid)))
    return found


def clean_after_killed_runs(out: Path) -> None:
    """A killed run's unfinished output, removed; the earlier output it had set aside for
    the swap, put back where the swap did not happen, removed where it did. A process that
    still exists is left alone."""
    for p, kind, pid in leftovers(out):
        if process_exists(pid):
            continue
        if kind == "old" and not out.exists():
            os.replace(p, out)
        else:
            shutil.rmtree(p, ignore_errors=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


@dataclass(frozen=True)
class Writer:
    """The command that writes a kind of folder, and how to tell its folders from others."""

    command: str  # "gpt-prepare", "gpt-export", "gpt-prune"
    wrote: Callable[[Path], bool]  # whether a folder is one the command wrote
    # the names of the entries the command wrote in such a folder (None: not known): any
    # other entry is the user's, and --force does not replace the folder with it inside
    entries: Callable[[Path], set[str] | None] = lambda folder: None


def check_output(out: Path, force: bool, writer: Writer, error: type[Exception] = OutputFolderError) -> None:
    """Refuse a file where the folder goes, and a folder with something in it unless `force`
    and it is one the same command wrote (a trained run, a data folder, anything else the
    user had is never replaced): at the start, and again just before the swap (a folder
    made there meanwhile is the user's)."""
    if out.exists() and not out.is_dir():
        raise error(f"output {display_name(out)} is a file, not a folder; "
                    "choose another --out (--force replaces only a folder)")
    check_not_dangling(out, error)
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise error(f"output folder {display_name(out)} already exists and is not empty (use --force to replace it)")
    if not writer.wrote(out):
        raise error(f"--force replaces only a folder that {writer.command} wrote, "
                    f"and {display_name(out)} is not one: it holds "
                    f"{listing(out)}; choose another --out, or move that folder away first")
    ours = writer.entries(out)
    theirs = None if ours is None else [p for p in out.iterdir() if p.name not in ours]
    if theirs:
        raise error(f"--force replaces a folder that {writer.command} wrote, and {display_name(out)} also holds "
                    f"what it did not write: {listing(out, only=theirs)}; move that out first, "
                    "or choose another --out")


def check_not_dangling(out: Path, error: type[Exception]) -> None:
    """Refuse an --out that is a link to nothing: neither creating nor renaming can make the
    folder it points to, and either would fail naming something else."""
    if out.is_symlink() and not out.exists():
        raise error(f"--out {display_name(out)} is a symbolic link to {display_name(os.readlink(out))}, which does "
                    "not exist; make that folder first, or choose another --out")


def listing(folder: Path, shown: int = 4, only: list[Path] | None = None) -> str:
    """A folder's entries (or `only` these of them) in a few words: the first names, then how
    many more."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in (folder.iterdir() if only is None else only))
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(display_name(n) for n in names[:shown]) + more


def check_replaceable(out: Path) -> None:
    """Refuse an output folder that renaming cannot replace (a mount point), or whose
    replacing would delete the folder the shell is in from under it."""
    if os.path.ismount(out):
        raise OutputFolderError(f"--out {display_name(out)} is a mount point, which cannot be replaced by renaming; "
                                "name a folder inside it")
    if first_inside(out, [os.getcwd()]) is not None:
        raise OutputFolderError(f"--out {display_name(out)} is, or holds, the current folder, "
                                "which replacing it would delete from under the shell; "
                                "run from another folder, or name another output")


def first_inside(out: Path, paths: list[str | Path]) -> str | Path | None:
    """The first of `paths` that is `out` or lies inside it: what replacing `out` would delete."""
    where = os.path.realpath(out).rstrip(os.sep) + os.sep
    for path in paths:
        if (os.path.realpath(path).rstrip(os.sep) + os.sep).startswith(where):
            return path
    return None


def move_into_place(tmp: Path, out: Path) -> None:
    """Swap the finished folder in; an old output is set aside first and removed after, or
    put back if the swap fails, so a failure at any point leaves one of the two whole. The
    new folder's files reach the disk before the rename does: after a power cut, a folder
    in place holds what was written, never the zeros of blocks the system had not yet
    written (shards are sized before they are filled)."""
    sync_tree(tmp)
    old = None
    if out.exists():
        old = beside(out, "old")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    sync_folder(out.parent)
    if old is not None and old.is_symlink():  # an --out that was a link: the link goes, not what it named
        old.unlink()
    elif old is not None:
        shutil.rmtree(old, ignore_errors=True)  # the new output is in place: nothing to fail for now
