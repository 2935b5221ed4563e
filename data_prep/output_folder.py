"""An output folder replaced whole or not at all, for every command that writes one
(gpt-prepare's data folder, gpt-export's): it is written beside its place as
`.OUT.partial-PID` and renamed into place when complete; an old folder is set aside as
`.OUT.old-PID` for the swap and removed after it. What a killed run (kill -9, a power cut)
left beside the folder is cleaned up by the next run."""
from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path


def partial_folder(out: Path) -> Path:
    """Where this process writes `out` before it is complete (not yet created)."""
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def clean_after_killed_runs(out: Path) -> None:
    """A killed run's unfinished output, removed; the earlier output it had set aside for
    the swap, put back where the swap did not happen, removed where it did. A process that
    still exists is left alone."""
    for p in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2 :].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or process_exists(int(pid)):
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


def move_into_place(tmp: Path, out: Path) -> None:
    """Swap the finished folder in; an old output is set aside first and removed after, or
    put back if the swap fails, so a failure at any point leaves one of the two whole."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # the new output is in place: nothing to fail for now
