"""Data-parallel training under torchrun with gloo on CPU (2 processes)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from gpt.store import checkpoint as ck
from gpt.train import train
from tests.helpers import ROOT, TINY_MODEL, child_env, prepared, untrained_loss

WORKER = ROOT / "tests" / "gpt" / "train" / "ddp_worker.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("ddp"))


def torchrun_failing(nproc: int, out, mode: str, options: dict) -> subprocess.CompletedProcess:
    """`ddp_worker.py` under torchrun, whatever its exit status."""
    env = child_env(OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = env["PYTHONPATH"].replace(str(ROOT), f"{ROOT}{os.pathsep}{ROOT / 'tests'}", 1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER),
           str(out), mode, json.dumps(options)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def torchrun(nproc: int, out, mode: str, options: dict) -> subprocess.CompletedProcess:
    proc = torchrun_failing(nproc, out, mode, options)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(folder, rank):
    return torch.load(folder / f"rank{rank}.pt", weights_only=True)


def test_two_processes_train_and_end_with_identical_weights(data, tmp_path):
    options = {**TINY_MODEL, "data": str(data), "out": str(tmp_path / "run"), "device": "cpu", "max_iters": 40}
    torchrun(2, tmp_path / "dump", "sampled", options)
    w0, w1 = weights(tmp_path / "dump", 0), weights(tmp_path / "dump", 1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    losses0 = json.loads((tmp_path / "dump" / "rank0.losses").read_text())
    losses1 = json.loads((tmp_path / "dump" / "rank1.losses").read_text())
    assert losses0 != losses1  # each rank drew its own batches
    assert sum(losses0[-5:]) / 5 < 0.7 * losses0[0]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch"] == 2 * TINY_MODEL["batch_size"]


def test_every_rank_averages_the_weights_rank_0_gave_it(data, tmp_path):
    # each rank initialises its own weights, and DDP gives every rank rank 0's: the average
    # must start from those, or a run stopped before its first step hands back rank-own models
    options = {**TINY_MODEL, "data": str(data), "out": str(tmp_path / "run"), "device": "cpu", "max_iters": 40,
               "ema": 0.9}
    torchrun(2, tmp_path / "dump", "stop-at-once", options)
    w0, w1 = weights(tmp_path / "dump", 0), weights(tmp_path / "dump", 1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_ranks_at_batch_b_equal_one_process_at_batch_2b(data, tmp_path, grad_accum):
    # fp32: a CPU with native bf16 would train in bf16, where the two batchings round differently
    base = {**TINY_MODEL, "data": str(data), "device": "cpu", "dtype": "fp32", "block_size": 16, "max_iters": 1,
            "warmup_iters": 0, "lr": 1e-2}
    torchrun(2, tmp_path / "two", "fixed", {**base, "out": str(tmp_path / "r2"), "batch_size": 8 // grad_accum,
                                            "grad_accum": grad_accum})
    torchrun(1, tmp_path / "one", "fixed", {**base, "out": str(tmp_path / "r1"), "batch_size": 16})
    two, one = weights(tmp_path / "two", 0), weights(tmp_path / "one", 0)
    assert all(torch.allclose(two[k], one[k], atol=1e-6) for k in one)


def test_run_written_by_two_processes_resumes_on_one(data, tmp_path):
    options = {**TINY_MODEL, "data": str(data), "out": str(tmp_path / "run"), "device": "cpu", "max_iters": 20}
    torchrun(2, tmp_path / "dump", "sampled", options)
    state = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
    assert state["step"] == 20 and state["world_size"] == 2 and len(state["rank_states"]) == 2
    result = train(overrides={"out": str(tmp_path / "run"), "max_iters": 30, "progress": False}, resume=True,
                   log=lambda s: None)
    assert result.step == 30 and result.val_loss < untrained_loss(data) - 0.6
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 1


def test_a_run_of_one_process_resumes_on_two(data, tmp_path):
    """The new rank has no saved random state: it gets a fresh, reproducible stream."""
    train(overrides={**TINY_MODEL, "data": str(data), "out": str(tmp_path / "run"), "device": "cpu", "max_iters": 10},
          log=lambda s: None)
    torchrun(2, tmp_path / "dump", "resume", {"out": str(tmp_path / "run"), "max_iters": 20, "progress": False})
    state = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
    assert state["step"] == 20 and state["world_size"] == 2 and len(state["rank_states"]) == 2
    w0, w1 = weights(tmp_path / "dump", 0), weights(tmp_path / "dump", 1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_a_stop_asked_for_on_one_rank_stops_every_rank_at_the_same_step(data, tmp_path):
    options = {**TINY_MODEL, "data": str(data), "out": str(tmp_path / "run"), "device": "cpu", "max_iters": 40}
    torchrun(2, tmp_path / "dump", "stop-on-rank-1", options)
    for rank in (0, 1):
        assert len(json.loads((tmp_path / "dump" / f"rank{rank}.losses").read_text())) == 5
    assert ck.load_checkpoint(tmp_path / "run" / "latest.pt")["step"] == 5


def test_two_ranks_cool_down_alike(data, tmp_path):
    """Patience runs out on both ranks at one step, and their cooldowns keep them one model."""
    options = {**TINY_MODEL, "data": str(data), "out": str(tmp_path / "run"), "device": "cpu", "max_iters": 100,
               "eval_interval": 2, "patience": 2, "cooldown": 0.5}
    torchrun(2, tmp_path / "dump", "overfit", options)
    w0, w1 = weights(tmp_path / "dump", 0), weights(tmp_path / "dump", 1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    state = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
    assert state["step"] == 18 and state["cooldown"]["start"] == 12
