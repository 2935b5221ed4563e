"""The installed commands ([project.scripts] in pyproject.toml): Ctrl-C while they start.

A command spends its first seconds importing torch and numpy (2 to 3 s on a 2-core CPU)
and parsing its arguments before `plumbing.command.run_command` can turn Ctrl-C into one
line; Python would print the interrupted import's traceback instead, dozens of lines. So
each entry point first makes Ctrl-C end the process at once with one line (nothing has
been written yet), and it stays so until `run_command` hands Ctrl-C back to Python for the
command's own handling (or the command ends without one: `--help`, a usage mistake). This
module and `gpt/__init__.py` import only the standard library, so the window left is
Python's own start. (`python -m gpt.train` imports its package first and keeps that
window; it is torchrun's way in, not a user's.)

The import also runs with the cyclic garbage collector paused, then freezes what it made:
importing torch makes about 250,000 objects, and the collections that many allocations
set off walked them all, again and again, to find no garbage (0.3-0.4 s of gpt-sample's
start, 20-30 ms of gpt-prepare's, 2-core Intel Xeon). Frozen, they are left out of every
later collection too, and gpt-prepare's worker processes, forked after, do not write to
the pages that hold them (Python's documentation for `gc.freeze` recommends exactly this
before a fork). The garbage that was there before is collected first, while there is
little to walk (a full collection after importing torch took 0.1 s), so that a caller's
garbage is never frozen; the import's own few thousand cyclic objects stay.
"""
from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
from collections.abc import Callable  # 0.1 ms, where typing takes 2-3 ms

# gpt-prepare does no linear algebra, and numpy's OpenBLAS starts a thread per core as it is
# imported, which spin before they sleep: 0.1 s of CPU on a 2-core Intel Xeon, taken from
# the workers that start at the same time. One thread, unless the user set it otherwise
PREPARE_ENVIRON = {"OPENBLAS_NUM_THREADS": "1"}


def entry_point(prog: str, module: str, interrupted: str | None = "interrupted while starting; nothing was written",
                environ: dict[str, str] | None = None) -> Callable[[list[str] | None], int]:
    """`module.main`, with Ctrl-C during its import one line (`interrupted`; None: nothing,
    as gpt-sample says nothing when stopped) and exit status 130; `environ`: variables set
    before the import, where the user has not set them."""

    def stop_while_starting(signum, frame) -> None:
        # plumbing.command.fail would write this line, but importing it is what is being
        # interrupted; and an import half done cannot be unwound, so the process ends here
        if interrupted:
            os.write(2, f"{prog}: error: {interrupted}\n".encode())
        os._exit(128 + signum)

    stop_while_starting.while_starting = True  # what run_command looks for

    def main(argv: list[str] | None = None) -> int:
        for name, value in (environ or {}).items():
            os.environ.setdefault(name, value)
        # left alone where Ctrl-C is ignored (a script's background job)
        ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if ours:
            signal.signal(signal.SIGINT, stop_while_starting)
        try:
            return load(module).main(argv)
        finally:
            if ours and signal.getsignal(signal.SIGINT) is stop_while_starting:
                signal.signal(signal.SIGINT, signal.default_int_handler)

    main.prog, main.module, main.environ = prog, module, dict(environ or {})
    return main


def load(module: str):
    """`module` imported with the collector paused, then its objects frozen (see above): on
    its first import, and where the caller has not turned the collector off."""
    if module in sys.modules or not gc.isenabled():
        return importlib.import_module(module)
    gc.collect()
    gc.disable()
    try:
        return importlib.import_module(module)
    finally:
        gc.freeze()
        gc.enable()


prepare = entry_point("gpt-prepare", "data_prep.cli", environ=PREPARE_ENVIRON)
train = entry_point("gpt-train", "gpt.train.cli")
sample = entry_point("gpt-sample", "gpt.sample.cli", interrupted=None)
evaluate = entry_point("gpt-eval", "gpt.evaluate.cli")
plot = entry_point("gpt-plot", "gpt.plot.cli")
export = entry_point("gpt-export", "gpt.export.cli")
prune = entry_point("gpt-prune", "gpt.prune.cli")
serve = entry_point("gpt-serve", "gpt.serve.cli", interrupted="interrupted while starting; nothing was served")
