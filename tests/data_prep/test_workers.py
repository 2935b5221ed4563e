"""The worker processes' start: Ctrl-C while they are forked."""
from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import child_env

# Ctrl-C sent from the fork's own after-fork hook in the main process: the moment a real
# one could land in, where Python drops what a signal raises ("Exception ignored")
INTERRUPTED_WHILE_FORKING = textwrap.dedent("""
    import os, signal
    from data_prep.passes.workers import Workers

    sent = []

    def interrupt():
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    os.register_at_fork(after_in_parent=interrupt)
    try:
        with Workers(2) as workers:
            print("not interrupted", list(workers.map(abs, [-1, -2])))
    except KeyboardInterrupt:
        print("interrupted")
""")


def test_ctrl_c_while_the_workers_are_forked_is_raised_once_they_exist():
    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the workers are not forked from this process here")
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_WHILE_FORKING], capture_output=True, text=True,
                          timeout=60, env=child_env())
    assert (proc.stdout, proc.stderr) == ("interrupted\n", "")
