"""gpt-train: learning, exact resume, crash-safe checkpoints, and clear errors."""
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from data_prep.prepare import PrepareOptions, prepare
from gpt.store import checkpoint as ck
from gpt.store.load import model_from_checkpoint
from gpt.train import NonFiniteLoss, Trainer, TrainError, train
from tests.helpers import ROOT, StepClock, assert_one_line_error, child_env, run_cli, tiny_run, write_corpus


def test_gpt_learns_well_below_uniform_entropy(data, tmp_path):
    result = train(overrides=tiny_run(data, tmp_path / "run", max_iters=150), log=lambda s: None)
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    assert result.val_loss < 0.5 * math.log(vocab)


def test_bigram_learns_and_gpt_beats_it(data, tmp_path):
    bigram = train(overrides=tiny_run(data, tmp_path / "bigram", model="bigram", max_iters=150, lr=3e-2),
                   log=lambda s: None)
    gpt = train(overrides=tiny_run(data, tmp_path / "gpt", max_iters=150), log=lambda s: None)
    vocab = json.loads((data / "meta.json").read_text())["vocab_size"]
    assert bigram.val_loss < 0.75 * math.log(vocab)
    assert gpt.val_loss < bigram.val_loss - 0.2


def test_resumed_run_matches_uninterrupted_run_step_for_step(data, tmp_path):
    kw = dict(max_iters=30, dropout=0.1, eval_interval=7)  # dropout: the torch RNG must resume too
    whole = train(overrides=tiny_run(data, tmp_path / "whole", **kw), log=lambda s: None)
    first = train(overrides=tiny_run(data, tmp_path / "split", **kw), should_stop=lambda step: step == 12,
                  log=lambda s: None)
    assert first.stopped_by == "request" and first.step == 12
    rest = train(overrides={"out": str(tmp_path / "split"), "progress": False}, resume=True, log=lambda s: None)
    resumed = dict(first.history + rest.history)
    assert [resumed[s] for s in range(1, 31)] == [dict(whole.history)[s] for s in range(1, 31)]
    assert rest.val_loss == whole.val_loss


def test_a_resumed_run_keeps_the_device_it_was_started_on(data, tmp_path, monkeypatch):
    """A --device cpu run resumed without --device stays on the CPU of a machine with a GPU.
    The GPU is made to look present only while the run chooses its device: faked for the
    whole run, torch's own optimizer would ask a CUDA build's driver for its stream."""
    import gpt.train.run as run_module

    train(overrides=tiny_run(data, tmp_path / "run", max_iters=4), log=lambda s: None)
    choose = run_module.resolve_device
    chosen = []

    def choose_where_a_gpu_looks_present(name):
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: True)
            chosen.append(choose(name))
        return chosen[-1]

    monkeypatch.setattr(run_module, "resolve_device", choose_where_a_gpu_looks_present)
    lines = []
    result = train(overrides={"out": str(tmp_path / "run"), "max_iters": 6, "progress": False}, resume=True,
                   log=lines.append)
    assert [d.type for d in chosen] == ["cpu"]
    assert result.step == 6
    assert any(line.startswith("resuming") and " on cpu (" in line for line in lines), lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_resuming_a_cuda_run_on_a_machine_without_one_says_how_to_go_on(data, tmp_path):
    run = tmp_path / "run"
    train(overrides=tiny_run(data, run, max_iters=4), log=lambda s: None)
    state = ck.load_checkpoint(run / "latest.pt")
    state["train_config"]["device"] = "cuda"  # as a run started with --device cuda saves it
    ck.save_checkpoint(run / "latest.pt", state)
    proc = run_cli("gpt.train", "--resume", "--out", str(run), "--max-iters", "6", "--quiet")
    assert_one_line_error(proc, "gpt-train", "CUDA is not available", "use --device cpu", "started with --device cuda")
    assert run_cli("gpt.train", "--resume", "--out", str(run), "--max-iters", "6", "--quiet",
                   "--device", "cpu").returncode == 0


def test_resuming_from_weights_that_are_not_finite_names_the_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    train(overrides=tiny_run(data, run, max_iters=4), log=lambda s: None)
    state = ck.load_checkpoint(run / "latest.pt")
    state["model"]["wte.weight"][0, 0] = float("nan")
    ck.save_checkpoint(run / "latest.pt", state)
    with pytest.raises(TrainError, match=f"{run / 'latest.pt'} are not finite"):
        train(overrides={"out": str(run), "max_iters": 6, "progress": False}, resume=True, log=lambda s: None)


def test_a_resumed_run_lets_go_of_the_checkpoint_it_loaded(data, tmp_path, monkeypatch):
    import gc
    import weakref

    train(overrides=tiny_run(data, tmp_path / "run", max_iters=4), log=lambda s: None)
    loaded, load = [], ck.load_checkpoint

    def load_and_watch(*args, **kwargs):
        state = load(*args, **kwargs)
        loaded.append(weakref.ref(state["model"]["wte.weight"]))
        return state

    monkeypatch.setattr(ck, "load_checkpoint", load_and_watch)
    alive = []

    def watch(step):
        gc.collect()
        alive.append(loaded[0]() is not None)
        return False

    train(overrides={"out": str(tmp_path / "run"), "max_iters": 6, "progress": False}, resume=True, should_stop=watch,
          log=lambda s: None)
    assert len(loaded) == 1 and alive and not any(alive)


def test_run_folder_holds_everything_sampling_needs(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=20), log=lambda s: None)
    run = tmp_path / "run"
    assert {"latest.pt", "best.pt", "config.json", "tokenizer.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)  # plain tensors and values only
    model, tok = model_from_checkpoint(state)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])
    assert tok.decode(tok.encode("the cat")) == "the cat"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert evals[-1]["step"] == 20 and {"tokens", "elapsed", "train_loss", "val_bpc"} <= set(evals[-1])
    assert {"lr", "tokens_per_s"} <= set(records[0])


def test_interrupted_save_leaves_previous_checkpoint_loadable(data, tmp_path, monkeypatch):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=10), log=lambda s: None)
    latest = tmp_path / "run" / "latest.pt"
    before = ck.load_checkpoint(latest)

    def dies_midway(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes")
        raise KeyboardInterrupt  # as if the process were stopped in the middle of writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(latest, {"step": 999})
    after = ck.load_checkpoint(latest)
    assert after["step"] == before["step"] == 10
    assert [p.name for p in latest.parent.iterdir() if ".tmp-" in p.name] == []


def test_checkpoint_killed_mid_write_keeps_previous_one(data, tmp_path):
    """A real `kill -9` in the middle of writing a checkpoint: the child says so from inside
    the write (half of it done), so the kill cannot come before or after it."""
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=10), log=lambda s: None)
    latest = tmp_path / "run" / "latest.pt"
    script = (
        "import sys, time, torch; from pathlib import Path; from gpt.store import checkpoint as ck\n"
        "def half_then_wait(obj, f):\n"
        "    f.write(b'PK' + bytes(1_000_000)); f.flush()\n"
        "    print('writing', flush=True); time.sleep(600)\n"
        "torch.save = half_then_wait\n"
        "ck.save_checkpoint(Path(sys.argv[1]), {'step': 999})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(latest)], stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout.readline() == b"writing\n"
    proc.kill()
    proc.wait()
    assert ck.load_checkpoint(latest)["step"] == 10
    assert any(".tmp-" in p.name for p in latest.parent.iterdir())  # the half-written file it left


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    import argparse

    path = tmp_path / "evil.pt"
    torch.save({"format": ck.CKPT_FORMAT, "version": 1, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ck.CheckpointError) as refused:
        ck.load_checkpoint(path)
    message = str(refused.value)
    assert "is refused" in message and "could run code from the file" in message and "\n" not in message
    assert "weights_only=False" not in message  # torch's advice: the one thing never to do with such a file


def test_truncated_and_newer_checkpoints_are_refused(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=5, eval_interval=5), log=lambda s: None)
    latest = tmp_path / "run" / "latest.pt"
    raw = latest.read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ck.CheckpointError, match="corrupt or truncated"):
        ck.load_checkpoint(tmp_path / "cut.pt")
    state = ck.load_checkpoint(latest)
    torch.save({**state, "version": ck.CKPT_VERSION + 1}, tmp_path / "new.pt")
    with pytest.raises(ck.CheckpointError, match="newer"):
        ck.load_checkpoint(tmp_path / "new.pt")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=10), log=lambda s: None)
    good = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
    real_step = Trainer.train_step

    def goes_bad(self, lr):
        loss = real_step(self, lr)
        return loss * float("nan") if self.step >= 13 else loss

    monkeypatch.setattr(Trainer, "train_step", goes_bad)
    with pytest.raises(NonFiniteLoss, match="at step 14.*keeps what was saved before it"):
        train(overrides={"out": str(tmp_path / "run"), "max_iters": 40, "progress": False}, resume=True,
              log=lambda s: None)
    kept = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
    assert kept["step"] == good["step"] == 10
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])


def test_a_non_finite_loss_before_any_checkpoint_says_nothing_was_kept(data, tmp_path):
    with pytest.raises(NonFiniteLoss, match="no checkpoint had been saved, so .* is left as the run found it"):
        train(overrides=tiny_run(data, tmp_path / "run", max_iters=10, lr=1e6, warmup_iters=0), log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_resume_with_other_vocabulary_or_shape_is_refused(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=5, eval_interval=5), log=lambda s: None)
    other = write_corpus(tmp_path / "other")
    (other / "extra.txt").write_text("ZQXJ vocabulary the first corpus never had\n", encoding="utf-8")
    prepare([other], tmp_path / "other-data", PrepareOptions(workers=1, progress=False))
    with pytest.raises(TrainError, match="different vocabulary"):
        train(overrides={"out": str(tmp_path / "run"), "data": str(tmp_path / "other-data"), "progress": False},
              resume=True, log=lambda s: None)
    with pytest.raises(TrainError, match="--n-layer"):
        train(overrides={"out": str(tmp_path / "run"), "n_layer": 3, "progress": False}, resume=True,
              log=lambda s: None)


def test_resume_with_other_eval_windows_or_seed_is_refused(data, tmp_path):
    """Both would change nothing the run does but what it records (the seed), or make its
    best val loss incomparable with the next (the windows)."""
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=5, eval_interval=5, eval_windows=4, seed=1),
          log=lambda s: None)
    for option, value in (("eval_windows", 5), ("seed", 2)):
        flag = "--" + option.replace("_", "-")
        with pytest.raises(TrainError, match=f"{flag} {value} does not match the checkpoint .*a resumed run keeps it"):
            train(overrides={"out": str(tmp_path / "run"), option: value, "max_iters": 6, "progress": False},
                  resume=True, log=lambda s: None)
    train(overrides={"out": str(tmp_path / "run"), "eval_windows": 4, "seed": 1, "max_iters": 6, "progress": False},
          resume=True, log=lambda s: None)  # the same values are no change


def test_a_batch_too_large_for_host_memory_is_refused_before_training(data, tmp_path, monkeypatch):
    """Where memory is overcommitted the allocation would not fail; the process would be killed."""
    monkeypatch.setattr("gpt.train.trainer.available_memory", lambda: 10_000)  # 8 x 33 int64 windows take 2,112 bytes
    train(overrides=tiny_run(data, tmp_path / "fits", max_iters=1, batch_size=8), log=lambda s: None)
    with pytest.raises(TrainError, match="does not fit in host memory .*; lower --batch-size"):
        train(overrides=tiny_run(data, tmp_path / "too-large", max_iters=1, batch_size=64), log=lambda s: None)
    assert not (tmp_path / "too-large").exists()


def test_a_model_too_large_for_memory_is_one_line_and_leaves_no_folder(data, tmp_path, monkeypatch):
    def allocation_fails(cfg):  # as torch says it on a CPU
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 252000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr("gpt.train.trainer.build_model", allocation_fails)
    with pytest.raises(TrainError, match=r"the model \(2 layers of 32 channels\) does not fit in cpu memory .*"
                                         r"choose a smaller --n-embd or --n-layer"):
        train(overrides=tiny_run(data, tmp_path / "run", max_iters=1), log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten_without_asking(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=5, eval_interval=5), log=lambda s: None)
    with pytest.raises(TrainError, match="--resume continues it"):
        train(overrides=tiny_run(data, tmp_path / "run", max_iters=5), log=lambda s: None)


def test_max_time_stops_on_budget_with_decayed_learning_rate(data, tmp_path, monkeypatch):
    """On a clock that advances a fixed amount per reading, so the test does not depend on
    this machine's speed."""
    import gpt.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", StepClock())
    result = train(overrides=tiny_run(data, tmp_path / "run", max_iters=None, max_time=3.0, min_lr=1e-5,
                                      log_interval=1),
                   log=lambda s: None)
    assert result.stopped_by == "max_time" and result.step > 20
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
               if "lr" in line]
    assert records[-1]["lr"] < 0.25 * 3e-3


def test_sigterm_checkpoints_at_a_step_boundary_and_resumes(data, tmp_path):
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet", "--n-layer", "2",
            "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "8", "--max-iters", "100000",
            "--eval-interval", "50"]
    env = child_env(PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gpt.train", *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    for line in proc.stdout:  # the run says when its first checkpoint is on disk: wait for that, not for a clock
        if line.startswith("step 50:"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    step = ck.load_checkpoint(tmp_path / "run" / "latest.pt")["step"]
    assert step >= 50
    again = run_cli("gpt.train", "--resume", "--out", str(tmp_path / "run"), "--max-iters", str(step + 5), "--quiet")
    assert again.returncode == 0, again.stderr
    assert ck.load_checkpoint(tmp_path / "run" / "latest.pt")["step"] == step + 5


@pytest.mark.parametrize(
    "make_args, fragments",
    [
        (lambda d, t: ["--data", str(t / "missing")], ["does not exist"]),
        (lambda d, t: ["--data", str(t)], ["not a prepared data folder"]),
        (lambda d, t: ["--data", str(d.parent / "corpus" / "doc000.txt")],
         ["doc000.txt is a text file", "gpt-prepare", "doc000.txt --out doc000-data"]),
        (lambda d, t: ["--data", str(d), "--block-size", "100000000"], ["--block-size", "larger than the data"]),
        pytest.param(lambda d, t: ["--data", str(d), "--device", "cuda"], ["CUDA is not available"],
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
        (lambda d, t: ["--data", str(d), "--batch-size", "20000000", "--block-size", "1000"],
         ["does not fit", "--batch-size"]),
        (lambda d, t: ["--data", str(d), "--max-iters", "0"], ["--max-iters"]),
        (lambda d, t: ["--resume", "--out", str(t / "nothing")], ["checkpoint"]),
    ],
    ids=["missing-data", "empty-data-folder", "text-file-as-data", "block-size-too-large", "no-cuda", "batch-too-large",
         "bad-max-iters", "resume-nothing"],
)
def test_bad_input_gives_one_clear_line(data, tmp_path, make_args, fragments):
    base = ["--out", str(tmp_path / "r"), "--device", "cpu", "--n-layer", "1", "--n-head", "1", "--n-embd", "8",
            "--block-size", "8", "--max-iters", "2", "--quiet"]
    proc = run_cli("gpt.train", *base, *make_args(data, tmp_path))  # the case's own options come last and win
    assert_one_line_error(proc, "gpt-train", *fragments)


def test_a_block_size_only_the_val_split_is_too_short_for_names_that_split(data, tmp_path):
    import data_prep

    splits = data_prep.load(data).meta["splits"]
    block = splits["val"]["tokens"]
    assert block + 1 < splits["train"]["tokens"]
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "r", "--device", "cpu", "--n-layer", "1",
                   "--n-head", "1", "--n-embd", "8", "--block-size", str(block), "--max-iters", "2", "--quiet")
    assert_one_line_error(proc, "gpt-train", "the val split's longest shard holds", "--val-fraction")


def test_data_from_a_newer_format_is_refused(data, tmp_path):
    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(data, newer)
    meta = json.loads((newer / "meta.json").read_text())
    (newer / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    proc = run_cli("gpt.train", "--data", str(newer), "--out", str(tmp_path / "r"), "--max-iters", "1", "--quiet")
    assert_one_line_error(proc, "gpt-train", "newer")


def test_a_time_budget_that_runs_out_just_after_an_evaluation_is_recorded_as_spent(data, tmp_path, monkeypatch):
    """Step 10's evaluation saves at 0.9 s of a 1 s budget; the clock passes 1 s before step 11.
    The last checkpoint must say the budget is spent, or a resume would train on."""
    from gpt.train.trainer import Trainer

    clock = {"s": 0.0}  # a clock the test moves, not the machine's
    train_step, save = Trainer.train_step, Trainer.save

    def timed_step(self, lr):
        clock["s"] += 0.09
        return train_step(self, lr)

    def slow_save(self, *args, **kwargs):
        save(self, *args, **kwargs)
        clock["s"] += 0.2

    monkeypatch.setattr(Trainer, "elapsed", lambda self: clock["s"])
    monkeypatch.setattr(Trainer, "train_step", timed_step)
    monkeypatch.setattr(Trainer, "save", slow_save)
    result = train(overrides=tiny_run(data, tmp_path / "run", max_iters=None, max_time=1.0, eval_interval=10),
                   log=lambda s: None)
    assert result.stopped_by == "max_time" and result.step == 10
    assert ck.load_checkpoint(tmp_path / "run" / "latest.pt")["elapsed"] >= 1.0


def test_a_run_records_its_data_folder_whole_so_it_means_the_same_from_any_folder(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(data, tmp_path)
    train(overrides=tiny_run(relative, tmp_path / "run", max_iters=2), log=lambda s: None)
    (tmp_path / "elsewhere" / relative).mkdir(parents=True)  # a folder by the same relative name, seen from elsewhere
    monkeypatch.chdir(tmp_path / "elsewhere")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["data"]
    assert recorded == os.path.abspath(data)
    assert train(overrides={"out": str(tmp_path / "run"), "max_iters": 3, "progress": False}, resume=True,
                 log=lambda s: None).step == 3  # resumed on its own data, not on the empty folder found here
