"""A run folder belongs to one run at a time.

The run that uses a folder holds an exclusive lock on `FOLDER/.lock` (an OS file lock, so a
run that is killed, even with `kill -9`, leaves no stale lock behind: the kernel releases
it). A second run on the same folder is refused with one line. Default folder names carry
the date, time and process id, so two runs started in the same second do not collide.
Holding the lock, a run also removes the temporary files that a killed save left behind,
and a run that fails before its first checkpoint removes the folder it created (or, in a
folder that was there, the files it wrote). A run started with --overwrite sets the old
run's files aside (`FOLDER/.previous-run/`) once it is ready to train, deletes them once it
has saved an evaluated checkpoint of its own (best.pt), and puts them back if it ends
without one (refused at start, a loss that became NaN in the first steps, a full disk at
the first save, stopped by Ctrl-C or killed before its first evaluation).
A folder that holds other files and no run is refused, hidden ones too (a `.lock` the
toolkit did not write, say), so a run never writes over them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from data_prep.prepared.data_folder import is_prepared_data
from plumbing.errors import UserError
from plumbing.output_folder import check_not_dangling, missing_parents, remove_empty

from .layout import BEST, LATEST, LOCK_FILE, PREVIOUS_RUN, RUN_FILES
from .runs import has_checkpoint, holds_run

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per folder is then up to the user
    fcntl = None

SET_ASIDE = ".complete"  # in .previous-run/: every file of the old run is in it
DISCARDED = PREVIOUS_RUN + ".discarded"  # .previous-run renamed once the new run stands, then deleted
TEMPORARIES = tuple(f".{name}.tmp-" for name in RUN_FILES)  # a killed save's half-written file starts so


def foreign_entries(path: Path) -> list[str]:
    """What in `path`, a folder that holds no run, no gpt-train run left there: every entry
    but a run's lock (which holds a process id), its set-aside folders and half-written
    saves. (A run that fails before its first checkpoint takes its other files with it.)"""
    ours = {PREVIOUS_RUN, DISCARDED}
    foreign = []
    for p in path.iterdir():
        if p.name in ours or (p.name.startswith(TEMPORARIES) and p.name.rpartition("-")[2].isdigit()):
            continue
        if p.name == LOCK_FILE and p.is_file() and not p.is_symlink() and is_pid_line(p):
            continue
        foreign.append(p.name)
    return sorted(foreign)


def is_pid_line(lock: Path) -> bool:
    try:
        text = lock.read_bytes()[:64]
    except OSError:
        return False
    return text.strip() == b"" or text.strip().isdigit()


class RunFolderError(UserError):
    """A run folder that cannot be claimed: a file, in use, or holding something else."""


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class RunFolder:
    def __init__(self, path: Path, created: bool, lock_fd: int | None, made_parents: list[Path] | None = None):
        self.path, self.created, self.lock_fd = path, created, lock_fd
        self.made_parents = made_parents or []  # the folders above `path` this run created with it
        self.replaces_run = False  # a new run with --overwrite, in a folder that holds one
        self.was_empty = False  # claimed for a new run with nothing in it: what is there later, this run wrote
        self.restored_previous_run = False  # set on release: an --overwrite run ended before it stood

    @classmethod
    def claim(cls, path: Path, new_run: bool, overwrite: bool) -> "RunFolder":
        """Create (if needed) and lock `path`. A new run refuses a folder that holds a run,
        unless `overwrite` (the old run's files are then set aside by `set_aside_previous_run`
        and deleted or put back by `settle`), and one that holds anything no run wrote."""
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"--out {path} is a file, not a folder; name a folder for the run")
        check_not_dangling(path, RunFolderError)
        created = not path.exists()
        if new_run and not created and not holds_run(path) and not (path / PREVIOUS_RUN).exists():
            refuse_foreign(path)  # before the lock is written or a temporary removed: nothing of the user's is touched
        made_parents = missing_parents(path)
        lock_made = not (path / LOCK_FILE).exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            remove_empty(made_parents)
            raise RunFolderError(f"cannot create the run folder {path} ({e.strerror})") from None
        try:
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            remove_empty(([path] if created else []) + made_parents)
            raise RunFolderError(f"cannot open {path / LOCK_FILE}, the lock of the run folder ({e.strerror}); "
                                 "a run writes in its folder") from None
        folder = cls(path, created, fd, made_parents)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderError(f"run folder {path} is in use by another gpt-train run (process {holder}); "
                                 f"wait for it, or choose another --out") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            folder.remove_stale_temporaries()
            folder.settle()  # what a killed --overwrite run left aside
            if new_run and holds_run(path):
                if not overwrite:
                    raise RunFolderError(f"run folder {path} already holds a run; "
                                         + ("--resume continues it, --overwrite starts it over" if has_checkpoint(path)
                                            else "it stopped before its first checkpoint, so there is nothing to "
                                            "resume; --overwrite starts it over"))
                folder.replaces_run = True
            elif new_run and foreign_entries(path):  # put there since the check above
                if lock_made:
                    (path / LOCK_FILE).unlink()  # the user's folder, as it was
                refuse_foreign(path)
            folder.was_empty = new_run and not folder.replaces_run
        except BaseException as e:
            folder.release(failed=True)
            if isinstance(e, OSError) and e.filename is None:  # a full disk: named as the run folder
                e.filename = str(path)
            raise
        return folder

    @classmethod
    def settle_if_idle(cls, path: Path) -> None:
        """Settle what a killed --overwrite run left in `path` (see `settle`) before a resume
        reads its checkpoint, unless a run holds the folder (it settles it itself)."""
        if fcntl is None or not (path / PREVIOUS_RUN).is_dir():
            return
        try:
            fd = os.open(path / LOCK_FILE, os.O_RDWR)
        except OSError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # held by a running run
            cls(path, created=False, lock_fd=None).settle()
        finally:
            os.close(fd)

    def set_aside_previous_run(self) -> None:
        """With --overwrite, move the old run's files aside: called once the new run is ready
        to write its own. `settle` deletes or restores them."""
        if self.replaces_run:
            aside = self.path / PREVIOUS_RUN
            aside.mkdir()
            for name in RUN_FILES:
                if (self.path / name).exists():
                    os.replace(self.path / name, aside / name)
            (aside / SET_ASIDE).touch()  # all moved: what is in the folder from now on is the new run's
            self.replaces_run = False

    def stands(self) -> bool:
        """Whether the new run has an evaluated checkpoint of its own, so the run it replaces
        can go: a Ctrl-C soon after an --overwrite (its save not yet evaluated) gets the old
        run back."""
        return (self.path / PREVIOUS_RUN / SET_ASIDE).exists() and all(
            (self.path / name).exists() for name in (LATEST, BEST))

    def discard_previous_run(self) -> None:
        """After each save: once the new run stands, the old run's files go. Renamed first, in
        one step, so that a kill in the middle of the deletion cannot leave a part of the old
        run to be put back over the new one."""
        if self.stands():
            shutil.rmtree(self.path / DISCARDED, ignore_errors=True)  # a rename cannot replace a folder with files
            os.replace(self.path / PREVIOUS_RUN, self.path / DISCARDED)
            shutil.rmtree(self.path / DISCARDED, ignore_errors=True)

    def settle(self) -> bool:
        """An --overwrite run's end (or, after a kill, the next run's start): where the new run
        stands the old run's files go; else the new run's files go and the old run's come
        back. Returns whether they came back."""
        shutil.rmtree(self.path / DISCARDED, ignore_errors=True)  # a deletion a kill interrupted
        aside = self.path / PREVIOUS_RUN
        if not aside.is_dir():
            return False
        if self.stands():
            self.discard_previous_run()
            return False
        if (aside / SET_ASIDE).exists():  # else killed while moving: the files in place are the old run's still
            for name in (BEST, *RUN_FILES):  # best.pt first: a kill in between leaves a run that does not stand
                remove(self.path / name)
            (aside / SET_ASIDE).unlink()
        for p in aside.iterdir():
            os.replace(p, self.path / p.name)
        aside.rmdir()
        return True

    def remove_stale_temporaries(self) -> None:
        """Half-written files of saves that were killed (`.latest.pt.tmp-PID`): with the lock
        held, no other process is writing here, so every one of them is stale."""
        for p in self.path.glob(".*.tmp-*"):
            if p.name.startswith(TEMPORARIES):
                p.unlink(missing_ok=True)

    def release(self, failed: bool = False) -> None:
        """Unlock, while still holding the lock so no other run can have claimed the folder:
        settle an --overwrite; after a run that failed before its first checkpoint, remove
        the folder if this run created it, else the files it wrote there."""
        if self.lock_fd is not None:
            self.restored_previous_run = self.settle()
        if failed and not has_checkpoint(self.path):
            if self.created:
                shutil.rmtree(self.path, ignore_errors=True)
                remove_empty(self.made_parents)
            elif self.was_empty:
                for name in RUN_FILES:
                    remove(self.path / name)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def refuse_foreign(path: Path) -> None:
    foreign = foreign_entries(path)
    if not foreign:
        return
    what = ("is a data folder written by gpt-prepare, not a run folder" if is_prepared_data(path)
            else f"holds other files and no run ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})")
    raise RunFolderError(f"--out {path} {what}; name a new or empty folder for the run")
