"""The Makefile as a new user meets it: where `make demo` puts its run, and how torch is
chosen and installed. A stand-in for the environment's python records what make asks of
it, so nothing is downloaded."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpt.store.layout import DEFAULT_ROOT
from tests.helpers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make here")

# `-c 'import torch'` succeeds once a `-m pip install` has run; every call is written down
FAKE_PYTHON = """#!/bin/sh
here="$(dirname "$0")/.."
echo "$@" >> "$here/calls"
case "$1" in
  -c) test -f "$here/has-torch" ;;
  -m) touch "$here/has-torch" ;;
esac
"""
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def make(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k not in ("TORCH", "CPU", "TORCH_INDEX", "VENV")})
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def venv(tmp_path) -> Path:
    """An environment whose python is the stand-in, without torch."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path / "venv"


def pip_calls(venv: Path) -> list[str]:
    calls = (venv / "calls").read_text().splitlines() if (venv / "calls").exists() else []
    (venv / "calls").unlink(missing_ok=True)
    return [c for c in calls if c.startswith("-m pip")]


def test_the_demo_trains_where_a_plain_gpt_sample_looks(venv):
    recipe = make("-n", "demo", f"VENV={venv}").stdout
    train = next(line for line in recipe.splitlines() if "gpt-train" in line).split()
    run = Path(train[train.index("--out") + 1])
    assert run.parent == DEFAULT_ROOT  # gpt-sample without --ckpt takes the newest run there


def test_cpu_1_installs_torch_from_pytorchs_cpu_index_with_progress_shown(venv):
    make("torch-choice", f"VENV={venv}", "CPU=1")
    # no -q: a large download shows progress
    assert pip_calls(venv) == [f"-m pip install torch>=2.9 --index-url {CPU_INDEX}"]
    assert (venv / ".torch").read_text().split() == ["torch>=2.9", CPU_INDEX]


def test_a_changed_torch_choice_reinstalls_torch_and_an_unchanged_one_does_nothing(venv):
    make("torch-choice", f"VENV={venv}", "CPU=1")
    pip_calls(venv)
    make("torch-choice", f"VENV={venv}")
    assert pip_calls(venv) == ["-m pip install --force-reinstall --no-deps torch>=2.9", "-m pip install torch>=2.9"]
    assert (venv / ".torch").read_text().split() == ["torch>=2.9"]
    make("torch-choice", f"VENV={venv}")
    assert pip_calls(venv) == []
