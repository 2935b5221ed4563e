"""gpt-train --fsdp under torchrun with gloo on CPU (2 processes): the same steps as DDP,
sharded checkpoints that resume exactly at any world size and under DDP, that every
single-process command loads, and that a killed save or a damaged file cannot pass for whole."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.config import ConfigError
from gpt.sample.cli import main as sample_main
from gpt.store import checkpoint as ck
from gpt.store.layout import SHARDS_FOLDER
from gpt.train import train
from gpt.train.presets import layered_config
from tests.gpt.train.test_distributed import torchrun, torchrun_failing, weights
from tests.helpers import ROOT, TINY_MODEL, assert_one_line_error, child_env, prepared, run_cli

# fp32, no dropout and AdamW (a preset's Muon gives way to it under --fsdp): FSDP and DDP then
# differ only in the order of floating-point sums
# 20 validation windows in batches of 4: three batches for rank 0, two for rank 1, where FSDP
# must still make the same number of forward passes on each
BASE = {**TINY_MODEL, "device": "cpu", "dtype": "fp32", "optimizer": "adamw", "max_iters": 20, "eval_interval": 5,
        "ema": 0.9, "grad_accum": 2, "batch_size": 4, "eval_windows": 20}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("fsdp"))


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """20 steps of a --fsdp run on 2 processes, start to end."""
    root = tmp_path_factory.mktemp("fsdp-run")
    torchrun(2, root / "dump", "sampled", {**BASE, "data": str(data), "out": str(root / "run"), "fsdp": True})
    return root


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory):
    """The same run, stopped at step 5 (a sharded checkpoint written by 2 processes)."""
    root = tmp_path_factory.mktemp("fsdp-stopped")
    torchrun(2, root / "dump", "stop-on-rank-1", {**BASE, "data": str(data), "out": str(root / "run"), "fsdp": True})
    return root / "run"


def copy_run(run, dest):
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def losses(folder, rank=0):
    return json.loads((folder / f"rank{rank}.losses").read_text())


def everything(path):
    """A checkpoint's weights, average and optimizer moments, whole, by name."""
    state = ck.load_checkpoint(path, shards="all")
    names = {}
    for key in ("model", "trained_model"):
        names.update({f"{key}/{k}": v for k, v in state.get(key, {}).items()})
    for index, moments in state["optimizer"]["state"].items():
        names.update({f"optim/{index}/{m}": t for m, t in moments.items()})
    return state, names


def test_fsdp_takes_the_steps_ddp_takes(data, uninterrupted, tmp_path):
    torchrun(2, tmp_path / "dump", "sampled", {**BASE, "data": str(data), "out": str(tmp_path / "run")})
    fsdp, ddp = uninterrupted / "dump", tmp_path / "dump"
    for rank in (0, 1):
        assert losses(fsdp, rank) == pytest.approx(losses(ddp, rank), rel=1e-5)
    a, b = weights(fsdp, 0), weights(ddp, 0)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in b)
    val = [[r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
           for run in (uninterrupted / "run", tmp_path / "run")]
    assert len(val[0]) == 4 and val[0] == pytest.approx(val[1], rel=1e-5)
    assert not (fsdp / "rank1.pt").exists()  # rank 0 alone hands back the whole model


def test_a_sharded_checkpoint_is_a_pointer_and_one_part_per_process(stopped):
    state = ck.load_checkpoint(stopped / "latest.pt", shards="none")
    assert state["step"] == 5 and state["world_size"] == 2 and state["model"] == {}
    folder = stopped / state["sharded"]["folder"]
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # the request to stop saved again at step 5, after the evaluation's save that best.pt points to
    best = stopped / ck.load_checkpoint(stopped / "best.pt", shards="none")["sharded"]["folder"]
    assert best != folder and {p.name for p in (stopped / SHARDS_FOLDER).iterdir()} == {folder.name, best.name}


def test_a_resumed_fsdp_run_continues_as_if_never_stopped(uninterrupted, stopped, tmp_path):
    run = copy_run(stopped, tmp_path / "run")
    torchrun(2, tmp_path / "dump", "resume", {"out": str(run)})
    assert losses(tmp_path / "dump") == losses(uninterrupted / "dump")[5:]
    a, b = weights(tmp_path / "dump", 0), weights(uninterrupted / "dump", 0)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("nproc, fsdp", [(1, True), (2, False)], ids=["fsdp-on-1", "ddp-on-2"])
def test_a_sharded_checkpoint_resumes_whole_on_other_ranks_and_under_ddp(stopped, tmp_path, nproc, fsdp):
    """Resumed and saved again at once: every weight, the average and AdamW's moments as they were."""
    run = copy_run(stopped, tmp_path / "run")
    _, before = everything(run / "latest.pt")
    torchrun(nproc, tmp_path / "dump", "resume-stop-at-once", {"out": str(run), "fsdp": fsdp})
    state, after = everything(run / "latest.pt")
    assert state["world_size"] == nproc and bool(state.get("sharded")) == fsdp
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    if not fsdp:  # the shards best.pt points to are kept, the others removed
        best = Path(ck.shard_record(run / "best.pt")["folder"]).name
        assert [p.name for p in (run / SHARDS_FOLDER).iterdir()] == [best]


def test_a_checkpoint_in_one_file_resumes_sharded(data, tmp_path):
    """One process's checkpoint; DDP's is the same file, with a sampler state per rank."""
    run = tmp_path / "run"
    train(overrides={**BASE, "data": str(data), "out": str(run)}, should_stop=lambda step: step == 5,
          log=lambda s: None)
    _, before = everything(run / "latest.pt")
    torchrun(2, tmp_path / "dump", "resume-stop-at-once", {"out": str(run), "fsdp": True})
    state, after = everything(run / "latest.pt")
    assert state.get("sharded") and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_process_resumes_a_sharded_run(stopped, tmp_path):
    run = copy_run(stopped, tmp_path / "run")
    result = train(overrides={"out": str(run), "max_iters": 8, "fsdp": False}, resume=True, log=lambda s: None)
    assert result.step == 8 and ck.load_checkpoint(run / "latest.pt", shards="none").get("sharded") is None


def test_every_single_process_command_loads_a_sharded_checkpoint(data, stopped, tmp_path, capsys):
    from gpt.evaluate.cli import main as eval_main
    from gpt.export.cli import main as export_main
    from gpt.prune.cli import main as prune_main

    assert sample_main(["--ckpt", str(stopped), "--prompt", "the", "--max-new-tokens", "8", "--seed", "1"]) == 0
    assert eval_main(["--ckpt", str(stopped)]) == 0
    assert "bits" in capsys.readouterr().out
    assert export_main([str(stopped), "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "model.safetensors").is_file()
    assert prune_main([str(stopped), "--out", str(tmp_path / "pruned"), "--mlp", "0.5", "--windows", "8"]) == 0
    assert ck.load_checkpoint(tmp_path / "pruned" / "latest.pt").get("sharded") is None
    result = train(overrides={**BASE, "data": str(data), "init_from": str(stopped), "out": str(tmp_path / "tuned"),
                              "max_iters": 2, "eval_interval": 2}, log=lambda s: None)
    assert result.step == 2


def test_a_save_killed_midway_leaves_the_previous_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    torchrun_failing(2, tmp_path / "dump", "die-while-saving",
                     {**BASE, "data": str(data), "out": str(run), "fsdp": True})
    state = ck.load_checkpoint(run / "latest.pt")
    assert state["step"] == 5 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert any(p.name.startswith(".tmp-") for p in (run / SHARDS_FOLDER).iterdir())  # what the save was writing
    train(overrides={"out": str(run), "max_iters": 6, "fsdp": False}, resume=True, log=lambda s: None)
    assert not any(p.name.startswith(".tmp-") for p in (run / SHARDS_FOLDER).iterdir())


@pytest.mark.parametrize("damage, fragment", [("delete", "is missing"), ("truncate", "is truncated"),
                                              ("flip", "do not match their checksum")])
def test_a_missing_truncated_or_damaged_shard_is_named_in_one_line(stopped, tmp_path, damage, fragment):
    run = copy_run(stopped, tmp_path / "run")
    folder = run / ck.load_checkpoint(run / "latest.pt", shards="none")["sharded"]["folder"]
    part = folder / "__1_0.distcp"
    if damage == "delete":
        part.unlink()
    elif damage == "truncate":
        part.write_bytes(part.read_bytes()[:1000])
    else:  # one byte changed, the size kept: what only the checksum sees
        data = bytearray(part.read_bytes())
        data[len(data) // 2] ^= 0xFF
        part.write_bytes(bytes(data))
    proc = run_cli("gpt.sample", "--ckpt", run / "latest.pt", "--prompt", "a", "--max-new-tokens", "2")
    assert_one_line_error(proc, "gpt-sample", str(part), fragment)
    if damage == "flip":  # a resume reads the shards through the same check
        proc = run_cli("gpt.train", "--resume", "--out", run, "--no-fsdp", "--max-iters", "8")
        assert_one_line_error(proc, "gpt-train", str(part), fragment)


def test_fsdp_started_alone_is_refused(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "r", "--device", "cpu", "--fsdp", "--quiet")
    assert_one_line_error(proc, "gpt-train", "--fsdp", "torchrun")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("options, fragment", [
    ({"model": "bigram"}, "bigram"), ({"optimizer": "muon"}, "--optimizer muon"), ({"dtype": "fp16"}, "fp16"),
    ({"lora": 4, "init_from": "x"}, "--lora"),
], ids=["bigram", "muon", "fp16", "lora"])
def test_what_fsdp_cannot_be_combined_with_is_named(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        layered_config("cpu-small", {"fsdp": True, **options}).validate()


def test_a_presets_muon_gives_way_to_adamw_under_fsdp():
    assert layered_config("cpu-small", {"fsdp": True}).optimizer == "adamw"


def test_a_sharded_run_resumed_without_its_average_continues_from_the_trained_weights(stopped, tmp_path):
    run = copy_run(stopped, tmp_path / "run")
    _, before = everything(run / "latest.pt")
    torchrun(1, tmp_path / "dump", "resume-stop-at-once", {"out": str(run), "ema": 0.0})
    _, after = everything(run / "latest.pt")
    trained = {k.split("/", 1)[1]: v for k, v in before.items() if k.startswith("trained_model/")}
    assert trained and all(torch.equal(after[f"model/{k}"], v) for k, v in trained.items())


def test_a_sharded_resume_under_torchrun_checks_every_shard(stopped, tmp_path):
    run = copy_run(stopped, tmp_path / "run")
    part = run / ck.shard_record(run / "latest.pt")["folder"] / ".metadata"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "gpt.train", "--resume", "--out", str(run), "--max-iters", "8"],
                          capture_output=True, text=True, timeout=300, env=child_env(OMP_NUM_THREADS="1"), cwd=ROOT)
    lines = proc.stderr.splitlines()
    # what follows torchrun's first line about the failed workers is its own report
    ours = lines[: next((i for i, line in enumerate(lines) if "elastic" in line), len(lines))]
    errors = [line for line in ours if line.startswith("gpt-train: error:")]
    assert proc.returncode != 0 and not any("Traceback" in line for line in ours), proc.stderr
    # both ranks read the damaged file; once one has failed, torchrun stops the other, which
    # on a busy machine may not have reached its check yet: it then says nothing, or that
    # it was stopped
    damaged = [line for line in errors if f"its shard file {part} is damaged" in line]
    assert damaged and len(errors) <= 2, proc.stderr
    assert all(line in damaged or "stopped by SIGTERM" in line for line in errors), proc.stderr


def test_copies_of_a_pointer_in_the_run_folder_and_other_folders_keep_their_shards(stopped, tmp_path):
    run = copy_run(stopped, tmp_path / "run")
    shutil.copy(run / "latest.pt", run / "keep-step5.pt")
    (run / SHARDS_FOLDER / "mine").mkdir()
    train(overrides={"out": str(run), "max_iters": 8, "fsdp": False}, resume=True, log=lambda s: None)
    assert ck.load_checkpoint(run / "keep-step5.pt")["step"] == 5
    assert (run / SHARDS_FOLDER / "mine").is_dir()


def test_a_run_that_trains_with_muon_is_not_resumed_under_fsdp(data, tmp_path):
    run = tmp_path / "run"
    train(overrides={**TINY_MODEL, "data": str(data), "out": str(run), "device": "cpu", "max_iters": 2},
          log=lambda s: None)  # cpu-small's Muon
    proc = run_cli("gpt.train", "--resume", "--out", run, "--fsdp", "--max-iters", "4")
    assert_one_line_error(proc, "gpt-train", "trains with Muon", "resume it without --fsdp")


def test_a_sharded_run_resumed_alone_says_how(stopped, tmp_path):
    run = copy_run(stopped, tmp_path / "run")
    proc = run_cli("gpt.train", "--resume", "--out", run, "--max-iters", "8")
    assert_one_line_error(proc, "gpt-train", "was trained with --fsdp", "--no-fsdp")
