"""A run folder belongs to one run at a time.

The run that uses a folder holds an exclusive lock on `FOLDER/.lock` (an OS file lock, so a
run that is killed, even with `kill -9`, leaves no stale lock behind: the kernel releases
it). A second run on the same folder is refused with one line. Default folder names carry
the date, time and process id, so two runs started in the same second do not collide.
Holding the lock, a run also removes the temporary files that a killed save left behind,
and a run that fails before writing anything removes the folder it created. A run started
with --overwrite clears the old run's files only once it is ready to train, so a run
refused at start (data of another vocabulary, a bad option) leaves the old run as it was.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .. import checkpoint as ck
from ..plot.live import PICTURE_FILE
from .errors import TrainError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run per folder is then up to the user
    fcntl = None

LOCK_FILE = ".lock"
RUN_FILES = (ck.LATEST, ck.BEST, "metrics.jsonl", "config.json", "tokenizer.json", PICTURE_FILE)


def default_run_dir(model: str) -> Path:
    return ck.DEFAULT_ROOT / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


class RunFolder:
    def __init__(self, path: Path, created: bool, lock_fd: int | None):
        self.path, self.created, self.lock_fd = path, created, lock_fd
        self.replaces_run = False  # a new run with --overwrite, in a folder that holds one

    @classmethod
    def claim(cls, path: Path, new_run: bool, overwrite: bool) -> "RunFolder":
        """Create (if needed) and lock `path`. A new run refuses a folder that holds a run,
        unless `overwrite`; the old run's files are then cleared by `clear_previous_run`."""
        if path.exists() and not path.is_dir():
            raise TrainError(f"--out {path} is a file, not a folder; name a folder for the run")
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TrainError(f"cannot create the run folder {path} ({e.strerror})") from None
        folder = cls(path, created, fd)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise TrainError(f"run folder {path} is in use by another gpt-train run (process {holder}); "
                                 f"wait for it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            folder.remove_stale_temporaries()
            if new_run and (path / ck.LATEST).exists():
                if not overwrite:
                    raise TrainError(f"run folder {path} already holds a run; --resume continues it, --overwrite starts it over")
                folder.replaces_run = True
        except BaseException:
            folder.release(failed=True)
            raise
        return folder

    def clear_previous_run(self) -> None:
        """With --overwrite, remove the old run's files: called once the new run is ready to
        write its own, so a run that fails to start has destroyed nothing."""
        if self.replaces_run:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            self.replaces_run = False

    def remove_stale_temporaries(self) -> None:
        """Half-written files of saves that were killed (`.latest.pt.tmp-PID`): with the lock
        held, no other process is writing here, so every one of them is stale."""
        for p in self.path.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)

    def release(self, failed: bool = False) -> None:
        """Unlock; after a failed start (before any step), remove the folder if this run
        created it, while still holding the lock so no other run can have claimed it."""
        if failed and self.created and not any((self.path / n).exists() for n in (ck.LATEST, ck.BEST)):
            shutil.rmtree(self.path, ignore_errors=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
