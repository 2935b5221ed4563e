"""A run folder belongs to one run at a time.

The run that uses a folder holds an exclusive lock on `FOLDER/.lock` (an OS file lock, so a
run that is killed, even with `kill -9`, leaves no stale lock behind: the kernel releases
it). A second run on the same folder is refused with one line. Default folder names carry
the date, time and process id, so two runs started in the same second do not collide.
Holding the lock, a run also removes the temporary files that a killed save left behind,
and a run that fails before its first checkpoint removes the folder it created (or, in a
folder that was there, the files it wrote). A run started with --overwrite sets the old
run's files aside (`FOLDER/.previous-run/`) once it is ready to train, deletes them once it
has saved a checkpoint of its own, and puts them back if it ends without one (refused at
start, a loss that became NaN in the first steps, a full disk at the first save, killed).
A folder that holds other files and no run is refused, so a run never writes over them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from data_prep.prepared.data_folder import is_prepared_data
from plumbing.errors import UserError
from plumbing.output_folder import check_not_dangling, missing_parents, remove_empty

from .layout import LATEST, LOCK_FILE, PREVIOUS_RUN, RUN_FILES
from .runs import has_checkpoint, holds_run

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per folder is then up to the user
    fcntl = None

SET_ASIDE = ".complete"  # in .previous-run/: every file of the old run is in it


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

    @classmethod
    def claim(cls, path: Path, new_run: bool, overwrite: bool) -> "RunFolder":
        """Create (if needed) and lock `path`. A new run refuses a folder that holds a run,
        unless `overwrite`; the old run's files are then cleared by `clear_previous_run`."""
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"--out {path} is a file, not a folder; name a folder for the run")
        check_not_dangling(path, RunFolderError)
        created = not path.exists()
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
            elif new_run and any(not p.name.startswith(".") for p in path.iterdir()):
                if lock_made:
                    (path / LOCK_FILE).unlink()  # the user's folder, as it was
                what = ("is a data folder written by gpt-prepare, not a run folder" if is_prepared_data(path)
                        else "holds other files and no run")
                raise RunFolderError(f"--out {path} {what}; name a new or empty folder for the run")
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

    def settle(self) -> None:
        """An --overwrite run's end (or, after a kill, the next run's start): with a
        checkpoint of its own the new run stands and the old run's files go; without one the
        new run's files go and the old run's come back."""
        aside = self.path / PREVIOUS_RUN
        if not aside.is_dir():
            return
        if (aside / SET_ASIDE).exists() and (self.path / LATEST).exists():
            shutil.rmtree(aside, ignore_errors=True)
            return
        if (aside / SET_ASIDE).exists():  # else killed while moving: the files in place are the old run's still
            for name in RUN_FILES:
                remove(self.path / name)
            (aside / SET_ASIDE).unlink()
        for p in aside.iterdir():
            os.replace(p, self.path / p.name)
        aside.rmdir()

    def remove_stale_temporaries(self) -> None:
        """Half-written files of saves that were killed (`.latest.pt.tmp-PID`): with the lock
        held, no other process is writing here, so every one of them is stale."""
        for p in self.path.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)

    def release(self, failed: bool = False) -> None:
        """Unlock, while still holding the lock so no other run can have claimed the folder:
        settle an --overwrite; after a run that failed before its first checkpoint, remove
        the folder if this run created it, else the files it wrote there."""
        if self.lock_fd is not None:
            self.settle()
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
