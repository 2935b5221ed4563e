"""The commands as a new user meets them: one run per folder, output that may go away,
full disks, files where folders belong, and every expected failure in one line."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep import DataError
from gpt.export.write import export_model
from gpt.store import checkpoint as ck
from gpt.store.run_folder import RunFolder, RunFolderError
from gpt.store.runs import load_data, resolve_checkpoint
from gpt.train import TrainError, train
from gpt.train.cli import INTERRUPTED
from gpt.train.progress import Progress
from plumbing.command import run_command
from tests.helpers import ROOT, assert_one_line_error, child_env, run_cli, tiny_run, write_corpus

TINY_ARGS = ["--device", "cpu", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
             "--batch-size", "4", "--eval-windows", "8", "--eval-interval", "5"]


def test_a_second_run_on_a_folder_in_use_is_refused(data, tmp_path):
    held = RunFolder.claim(tmp_path / "run", new_run=True, overwrite=False)  # as a running gpt-train holds it
    try:
        proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--max-iters", "2", "--quiet",
                       *TINY_ARGS)
        assert_one_line_error(proc, "gpt-train", "is in use by another gpt-train run", f"process {os.getpid()}")
    finally:
        held.release()
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--max-iters", "2", "--quiet", *TINY_ARGS)
    assert proc.returncode == 0, proc.stderr  # a released (or killed) holder leaves no stale lock


def test_two_runs_started_at_once_on_one_folder_leave_one_run(data, tmp_path):
    args = [sys.executable, "-m", "gpt.train", "--data", str(data), "--out", str(tmp_path / "run"), "--max-iters", "10",
            "--quiet", *TINY_ARGS]
    procs = [subprocess.Popen(args, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    ends = sorted((p.wait(timeout=180), p.communicate()[1]) for p in procs)
    (won, _), (lost, refusal) = ends
    # the second is refused while the first holds the folder, or after it, since it then holds a run
    assert (won, lost) == (0, 1) and refusal.count("\n") == 1, refusal
    assert "is in use by another gpt-train run" in refusal or "already holds a run" in refusal, refusal
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [5, 10]  # each evaluation once, from one run


def test_a_run_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    holder = ("import sys, time; from pathlib import Path; from gpt.store.run_folder import RunFolder\n"
              "RunFolder.claim(Path(sys.argv[1]), new_run=True, overwrite=False); "
              "print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "run")], stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout.readline() == b"held\n"
    with pytest.raises(RunFolderError, match="in use"):
        RunFolder.claim(tmp_path / "run", new_run=True, overwrite=False)
    proc.kill()
    proc.wait()
    RunFolder.claim(tmp_path / "run", new_run=True, overwrite=False).release()  # the kernel let go of the lock

def test_default_run_folders_of_runs_started_together_differ(data, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "gpt.train", "--data", str(data), "--max-iters", "2", "--quiet",
                               *TINY_ARGS],
                              cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert len([p for p in (tmp_path / "checkpoints").iterdir() if (p / "latest.pt").exists()]) == 2


def into_a_head_that_has_gone(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """`COMMAND | head -c 10`, started once head has read its 10 bytes and left, so every write
    the command makes finds the reader gone. (With head still there, a short output slips into
    the pipe before it leaves, and the command never meets the broken pipe at all.)"""
    read, write = os.pipe()
    head = subprocess.Popen(["head", "-c", "10"], stdin=read, stdout=subprocess.DEVNULL)
    os.close(read)
    os.write(write, b"0123456789")
    head.wait(timeout=30)
    try:
        return subprocess.run(command.split(), stdout=write, stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=180,
                              env=child_env())
    finally:
        os.close(write)


@pytest.mark.parametrize("command", ["prepare", "train", "sample", "eval", "plot", "export", "prune"])
def test_every_command_survives_its_output_being_cut_short(data, tmp_path, command):
    if command == "plot":
        pytest.importorskip("matplotlib")
    write_corpus(tmp_path / "corpus", n_docs=20)
    lines = {
        "prepare": "data_prep.cli corpus --out d --workers 1",
        "train": f"gpt.train --data {data} --out run --max-iters 10 {' '.join(TINY_ARGS)}",
        "sample": "gpt.sample --ckpt run --max-new-tokens 2000 --ignore-eot --device cpu",
        "eval": "gpt.evaluate --ckpt run --device cpu",
        "plot": "gpt.plot run --out run.png",
        "export": "gpt.export.cli run --out exported",
        "prune": "gpt.prune run --out pruned --heads 0.5 --device cpu",
    }
    if command not in ("prepare", "train"):
        train(overrides=tiny_run(data, tmp_path / "run", max_iters=2), log=lambda s: None)
    proc = into_a_head_that_has_gone(f"{sys.executable} -m {lines[command]}", tmp_path)
    # the command ends quietly: no traceback, no error line, exit status 0
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "error:" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
    if command == "train":  # the run went on to the end, printing nothing more
        assert ck.load_checkpoint(tmp_path / "run" / "latest.pt")["step"] == 10


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_sampling_into_a_full_disk_is_one_line(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=2), log=lambda s: None)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "gpt.sample", "--ckpt", "run", "--max-new-tokens", "50",
                               "--device", "cpu"],
                              cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                              env=child_env())
    assert_one_line_error(proc, "gpt-sample", "No space left on device")


def test_a_full_disk_during_a_save_is_one_clear_error_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=5), log=lambda s: None)

    def disk_full(obj, f, *a, **k):
        f.write(b"PK\x03\x04")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    with pytest.raises(TrainError,
                       match="cannot write a checkpoint .*No space left on device.*previous checkpoint is kept"):
        train(overrides={"out": str(tmp_path / "run"), "max_iters": 10, "progress": False}, resume=True,
              log=lambda s: None)
    monkeypatch.undo()
    assert ck.load_checkpoint(tmp_path / "run" / "latest.pt")["step"] == 5


def test_out_naming_a_file_is_one_line(data, tmp_path):
    (tmp_path / "afile").write_text("mine")
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "afile", "--max-iters", "2", "--quiet", *TINY_ARGS)
    assert_one_line_error(proc, "gpt-train", "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_out_naming_a_link_to_nothing_is_one_line(data, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "link", "--max-iters", "2", "--quiet", *TINY_ARGS)
    assert_one_line_error(proc, "gpt-train", f"is a symbolic link to {tmp_path / 'nowhere'}, which does not exist")
    assert (tmp_path / "link").is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_failed_start_leaves_no_empty_run_folder(tmp_path):
    proc = run_cli("gpt.train", "--data", tmp_path / "missing", "--out", tmp_path / "run", "--max-iters", "2",
                   "--quiet", *TINY_ARGS)
    assert_one_line_error(proc, "gpt-train", "does not exist")
    assert not (tmp_path / "run").exists()


def test_overwrite_starts_the_run_over_and_a_refused_start_keeps_the_old_run(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=12), log=lambda s: None)
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("latest.pt", "metrics.jsonl", "config.json")}
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--overwrite", "--max-iters", "2", "--quiet",
                   *TINY_ARGS, "--block-size", "100000")  # longer than the data: refused once the data is read
    assert_one_line_error(proc, "gpt-train", "--block-size")
    assert {name: (tmp_path / "run" / name).read_bytes() for name in before} == before
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=3), overwrite=True, log=lambda s: None)
    assert ck.load_checkpoint(tmp_path / "run" / "latest.pt")["step"] == 3
    assert max(json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def run_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


def fail_at_step(n: int):
    def should_stop(step: int) -> bool:
        if step == n:
            raise TrainError("the loss became nan (a stand-in)")
        return False
    return should_stop


def test_an_overwrite_that_fails_before_its_first_checkpoint_puts_the_old_run_back(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=12), log=lambda s: None)
    before = run_files(tmp_path / "run")
    with pytest.raises(TrainError, match="stand-in"):
        train(overrides=tiny_run(data, tmp_path / "run", max_iters=50, eval_interval=40), overwrite=True,
              should_stop=fail_at_step(3), log=lambda s: None)
    assert run_files(tmp_path / "run") == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted([".lock", *before])


def test_an_overwrite_takes_the_old_runs_export_with_it(data, tmp_path):
    # left in place, RUN/safetensors would sample the old model as if it were the new run's
    from gpt.export.write import export_model

    train(overrides=tiny_run(data, tmp_path / "run", max_iters=4), log=lambda s: None)
    export_model(tmp_path / "run", tmp_path / "run" / "safetensors")
    with pytest.raises(TrainError, match="stand-in"):  # ends before its first checkpoint: the export comes back
        train(overrides=tiny_run(data, tmp_path / "run", max_iters=50, eval_interval=40), overwrite=True,
              should_stop=fail_at_step(3), log=lambda s: None)
    assert (tmp_path / "run" / "safetensors" / "model.safetensors").is_file()
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=3), overwrite=True, log=lambda s: None)
    assert not (tmp_path / "run" / "safetensors").exists() and not (tmp_path / "run" / ".previous-run").exists()


def test_an_overwrite_killed_before_its_first_checkpoint_is_put_back_at_the_next_start(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=12), log=lambda s: None)
    before = run_files(tmp_path / "run")
    aside = tmp_path / "run" / ".previous-run"  # as a killed --overwrite run leaves it
    aside.mkdir()
    for name in before:
        os.replace(tmp_path / "run" / name, aside / name)
    (aside / ".complete").touch()
    (tmp_path / "run" / "config.json").write_text('{"model": {}, "train": {}}')  # the new run's
    RunFolder.claim(tmp_path / "run", new_run=False, overwrite=False).release()
    assert run_files(tmp_path / "run") == before and not aside.exists()


def test_an_overwrite_killed_while_setting_the_old_run_aside_loses_none_of_it(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=12), log=lambda s: None)
    before = run_files(tmp_path / "run")
    aside = tmp_path / "run" / ".previous-run"
    aside.mkdir()
    os.replace(tmp_path / "run" / "latest.pt", aside / "latest.pt")  # killed after the first move
    RunFolder.claim(tmp_path / "run", new_run=False, overwrite=False).release()
    assert run_files(tmp_path / "run") == before and not aside.exists()


def test_an_overwrite_frees_the_old_run_at_its_first_checkpoint_not_at_its_end(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=4), log=lambda s: None)
    seen = []
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=6, eval_interval=2), overwrite=True,
          should_stop=lambda step: seen.append((step, (tmp_path / "run" / ".previous-run").exists())),
          log=lambda s: None)
    assert seen[:3] == [(0, True), (1, True), (2, False)]  # step 2's evaluation saved the first checkpoint


def test_an_overwrite_stopped_before_its_first_evaluation_gets_the_old_run_back(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=12), log=lambda s: None)
    before = run_files(tmp_path / "run")
    result = train(overrides=tiny_run(data, tmp_path / "run", max_iters=50, eval_interval=40), overwrite=True,
                   should_stop=lambda step: step == 3, log=lambda s: None)  # its stop saves an unevaluated checkpoint
    assert result.previous_run_restored and run_files(tmp_path / "run") == before
    assert not (tmp_path / "run" / ".previous-run").exists()


def test_ctrl_c_soon_after_an_overwrite_says_the_old_run_is_back(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=12), log=lambda s: None)
    before = run_files(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "gpt.train", "--data", str(data), "--out", str(tmp_path / "run"),
                             "--overwrite", "--max-iters", "100000", *TINY_ARGS, "--eval-interval", "50000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(PYTHONUNBUFFERED="1"))
    for line in proc.stdout:  # the old run is set aside before this line: stop the new one after it
        if line.startswith("training into"):
            break
    # and once it has logged a step: the loop then takes Ctrl-C at a step boundary (before, the
    # start-up's own handler answers it, putting the old run back as well, in other words)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "before this run's first evaluation" in err and "is back in" in err and "Traceback" not in err
    assert run_files(tmp_path / "run") == before


def test_the_old_run_is_deleted_as_a_whole_once_the_new_one_stands(data, tmp_path):
    """Renamed before it is deleted: a kill in the middle of the deletion leaves a folder of
    discarded files, never a part of the old run to be put back over the new one."""
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=4), log=lambda s: None)
    now = run_files(tmp_path / "run")
    left = tmp_path / "run" / ".previous-run.discarded"  # as a kill during the deletion left it
    left.mkdir()
    (left / "latest.pt").write_bytes(b"the old run's, half deleted")
    RunFolder.claim(tmp_path / "run", new_run=False, overwrite=False).release()
    assert run_files(tmp_path / "run") == now and not left.exists()


def test_a_folder_of_hidden_files_only_is_refused_and_left_as_it_was(data, tmp_path):
    folder = tmp_path / "dots"
    folder.mkdir()
    (folder / ".lock").write_text("the user's own notes")  # not a process id: no lock of a run
    (folder / ".report.txt.tmp-1").write_text("a draft")
    proc = run_cli("gpt.train", "--data", data, "--out", folder, "--max-iters", "2", "--quiet", *TINY_ARGS)
    assert_one_line_error(proc, "gpt-train", "holds other files and no run (.lock, .report.txt.tmp-1)")
    assert run_files(folder) == {".report.txt.tmp-1": b"a draft"}
    assert (folder / ".lock").read_text() == "the user's own notes"


def test_resume_after_an_overwrite_killed_before_its_first_checkpoint_continues_the_run_it_replaced(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=12), log=lambda s: None)
    aside = tmp_path / "run" / ".previous-run"  # as a killed --overwrite run leaves it
    aside.mkdir()
    for name in run_files(tmp_path / "run"):
        os.replace(tmp_path / "run" / name, aside / name)
    (aside / ".complete").touch()
    with pytest.raises(ck.CheckpointError, match="waits in .*previous-run"):  # a reader says where it is
        resolve_checkpoint(tmp_path / "run")
    result = train(overrides={"out": str(tmp_path / "run"), "max_iters": 14, "progress": False}, resume=True,
                   log=lambda s: None)
    assert result.step == 14 and not aside.exists()


@pytest.mark.parametrize("existed", [False, True])
def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(data, tmp_path, existed):
    if existed:
        (tmp_path / "run").mkdir()
    with pytest.raises(TrainError, match="stand-in"):
        train(overrides=tiny_run(data, tmp_path / "run", max_iters=50, eval_interval=40), should_stop=fail_at_step(3),
              log=lambda s: None)
    assert not (tmp_path / "run").exists() if not existed else run_files(tmp_path / "run") == {}


def test_a_new_run_that_fails_before_its_first_checkpoint_removes_the_folders_it_made_above_it(data, tmp_path):
    with pytest.raises(TrainError, match="stand-in"):
        train(overrides=tiny_run(data, tmp_path / "a" / "b" / "run", max_iters=50, eval_interval=40),
              should_stop=fail_at_step(3), log=lambda s: None)
    assert not (tmp_path / "a").exists()


def test_a_folder_of_other_files_is_refused_as_a_run_folder(data, tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "config.json").write_text('{"my": 1}')
    (tmp_path / "proj" / "metrics.jsonl").write_text("notes\n")
    before = run_files(tmp_path / "proj")
    for extra in ([], ["--overwrite"]):
        proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "proj", "--max-iters", "2", "--quiet",
                       *TINY_ARGS, *extra)
        assert_one_line_error(proc, "gpt-train", "holds other files and no run")
    assert run_files(tmp_path / "proj") == before and not (tmp_path / "proj" / ".lock").exists()


def test_a_full_disk_at_the_first_save_is_one_line_and_leaves_no_folder(data, tmp_path):
    # torch's zip writer turns the failed write into a RuntimeError
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--max-iters", "4", "--eval-interval", "2",
                   "--quiet", *TINY_ARGS, file_size_limit=40_000)
    assert_one_line_error(proc, "gpt-train", "cannot write a checkpoint", "File too large", "no checkpoint was saved")
    assert "best so far" not in proc.stdout  # nothing was saved, as best.pt or otherwise
    assert not (tmp_path / "run").exists()


def test_a_full_disk_before_the_first_step_is_one_line_naming_the_file_and_leaves_no_folder(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--max-iters", "2", "--quiet", *TINY_ARGS,
                   file_size_limit=2)  # the process id in .lock is cut short, and config.json fails
    assert_one_line_error(proc, "gpt-train", f"File too large: {tmp_path / 'run' / 'config.json'}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", [["--model", "bigram"], ["--preset", "bigram"]])
def test_a_transformers_shape_given_to_a_bigram_is_one_line(data, tmp_path, model):
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--max-iters", "1", "--quiet", *model,
                   "--n-layer", "3", "--pos", "learned")
    assert_one_line_error(proc, "gpt-train", "--n-layer", "--pos", "shape a transformer", "--model gpt")
    assert not (tmp_path / "run").exists()


def test_a_data_folder_given_as_out_is_named_as_a_data_folder(data):
    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    proc = run_cli("gpt.train", "--data", data, "--out", data, "--max-iters", "1", "--quiet", *TINY_ARGS)
    assert_one_line_error(proc, "gpt-train", "is a data folder written by gpt-prepare, not a run folder")
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == before


def test_a_lock_that_cannot_be_opened_is_named_as_the_lock(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=2), log=lambda s: None)
    (tmp_path / "run" / ".lock").unlink()
    (tmp_path / "run" / ".lock").mkdir()
    proc = run_cli("gpt.train", "--resume", "--out", tmp_path / "run", "--max-iters", "4", "--quiet")
    assert_one_line_error(proc, "gpt-train", f"cannot open {tmp_path / 'run' / '.lock'}, the lock of the run folder")
    (tmp_path / "other").mkdir()  # in a folder without a run, it is no lock of a run's at all
    (tmp_path / "other" / ".lock").mkdir()
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "other", "--max-iters", "2", "--quiet", *TINY_ARGS)
    assert_one_line_error(proc, "gpt-train", "holds other files and no run (.lock)")


def test_a_run_stopped_before_its_first_checkpoint_is_named_so_with_the_way_to_start_it_over(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=2), log=lambda s: None)
    for name in ("latest.pt", "best.pt"):  # as a run killed before its first save leaves it
        (tmp_path / "run" / name).unlink(missing_ok=True)
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--max-iters", "2", "--quiet", *TINY_ARGS)
    assert_one_line_error(proc, "gpt-train", "stopped before its first checkpoint, so there is nothing to resume",
                          "--overwrite starts it over")
    proc = run_cli("gpt.train", "--resume", "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(proc, "gpt-train", "its run stopped before saving one",
                          f"gpt-train --overwrite --out {tmp_path / 'run'}")


def test_overwrite_also_removes_the_old_runs_picture(data, tmp_path):
    pytest.importorskip("matplotlib")
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=4, eval_interval=2), log=lambda s: None)
    assert (tmp_path / "run" / "progress.png").exists()
    seen = []
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=3, eval_interval=2), overwrite=True,
          should_stop=lambda step: seen.append((tmp_path / "run" / "progress.png").exists()), log=lambda s: None)
    assert seen[0] is False  # step 1, before the new run's first evaluation draws its own


def test_half_written_files_of_a_killed_save_are_removed_at_the_next_start(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=5), log=lambda s: None)
    stale = tmp_path / "run" / ".latest.pt.tmp-999999"
    stale.write_bytes(b"PK half a checkpoint")
    train(overrides={"out": str(tmp_path / "run"), "max_iters": 6, "progress": False}, resume=True, log=lambda s: None)
    assert not stale.exists()


def test_resuming_a_spent_budget_says_so_and_a_new_budget_continues(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=None, max_time=1.0), log=lambda s: None)
    proc = run_cli("gpt.train", "--resume", "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(proc, "gpt-train", "budget", "is used up", f"{tmp_path / 'run'} is at step", "--max-iters")
    step = ck.load_checkpoint(tmp_path / "run" / "latest.pt")["step"]
    result = train(overrides={"out": str(tmp_path / "run"), "max_iters": step + 3, "progress": False}, resume=True,
                   log=lambda s: None)
    assert result.step == step + 3 and result.stopped_by == "max_iters"


def test_a_data_folder_given_as_a_run_is_named_as_a_data_folder(data):
    with pytest.raises(ck.CheckpointError, match="is a data folder written by gpt-prepare, not a run folder"):
        resolve_checkpoint(data)


def test_a_run_or_an_export_given_as_data_is_named_as_such(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=2), log=lambda s: None)
    proc = run_cli("gpt.train", "--data", str(tmp_path / "run"), "--out", str(tmp_path / "again"), "--quiet")
    assert_one_line_error(proc, "gpt-train", f"is a run folder written by gpt-train, not a data folder; give --data "
                                             f"the folder gpt-prepare wrote (this run trained on {data})")
    export_model(tmp_path / "run", tmp_path / "exported")
    with pytest.raises(DataError, match="is an exported model written by gpt-export, not a data folder"):
        load_data(tmp_path / "exported")


def test_resume_with_nothing_to_resume_names_gpt_trains_own_option(tmp_path):
    proc = run_cli("gpt.train", "--resume", "--quiet", cwd=tmp_path)
    assert_one_line_error(proc, "gpt-train", "name a run folder with --out")


@pytest.mark.parametrize("given,message", [
    (["--overwrite"], "give one of them"),
    (["--preset", "cpu-small"], "keeps its own settings"),
    (["--init-from", "elsewhere"], "keeps the base it started from"),
])
def test_resume_refuses_the_options_that_start_a_new_run(data, tmp_path, given, message):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=4), log=lambda s: None)
    before = (tmp_path / "run" / "latest.pt").read_bytes()
    proc = run_cli("gpt.train", "--resume", "--out", tmp_path / "run", "--max-iters", "8", "--quiet", *given)
    assert_one_line_error(proc, "gpt-train", message)
    assert (tmp_path / "run" / "latest.pt").read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="run folders are locked with flock")
def test_a_folder_whose_run_has_not_saved_yet_is_named_as_in_use_not_as_empty(data, tmp_path):
    folder = RunFolder.claim(tmp_path / "run", new_run=True, overwrite=False)  # a run before its first checkpoint
    try:
        with pytest.raises(ck.CheckpointError, match=rf"\(process {os.getpid()}\) is training there"):
            train(overrides={"out": str(tmp_path / "run")}, resume=True, log=lambda s: None)
        proc = run_cli("gpt.sample", "--ckpt", tmp_path / "run", "--max-new-tokens", "5")
        assert_one_line_error(proc, "gpt-sample", "has no checkpoint yet", f"(process {os.getpid()}) is training there")
    finally:
        folder.release()
    with pytest.raises(ck.CheckpointError, match="has no checkpoint") as e:  # once it is gone, the folder is empty
        resolve_checkpoint(tmp_path / "run")
    assert "training there" not in str(e.value)


def test_text_the_terminal_cannot_encode_is_escaped_not_a_traceback():
    script = ("import sys; from plumbing.command import run_command\n"
              "sys.exit(run_command('gpt-x', lambda: print('caf\\u00e9')))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                          env=child_env(PYTHONIOENCODING="ascii"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"caf\\xe9\n", b"")


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(capsys):
    def starting():
        raise KeyboardInterrupt

    assert run_command("gpt-train", starting, interrupted=INTERRUPTED) == 130
    assert capsys.readouterr().err == f"gpt-train: error: {INTERRUPTED}\n"


def test_ctrl_c_while_a_command_is_still_importing_is_one_line_and_exit_130(tmp_path):
    """A command's first seconds are its imports (torch, numpy), before its main can catch
    Ctrl-C: a command module that is interrupted as it loads stands in for them."""
    (tmp_path / "slow_start.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                            "time.sleep(60)\n")
    script = "import sys; from gpt.entry_points import entry_point; sys.exit(entry_point('gpt-train', 'slow_start')())"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          env=child_env(PYTHONPATH=f"{child_env()['PYTHONPATH']}{os.pathsep}{tmp_path}"))
    assert proc.returncode == 130
    assert proc.stderr == "gpt-train: error: interrupted while starting; nothing was written\n"


@pytest.mark.parametrize("when, said", [
    ("parsing", "gpt-train: error: interrupted while starting; nothing was written\n"),
    ("working", "gpt-train: error: stopped\n"),
])
def test_ctrl_c_before_the_commands_own_handling_is_the_start_up_line_and_after_it_the_commands(tmp_path, when, said):
    """Between the import and run_command (parsing the arguments) Ctrl-C still ends the
    start-up; inside run_command the command answers it."""
    (tmp_path / "slow_parse.py").write_text(
        "import os, signal, time\nfrom plumbing.command import run_command\n"
        "def stop():\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(60)\n"
        "def main(argv):\n"
        f"    if {when!r} == 'parsing':\n        stop()\n"
        "    return run_command('gpt-train', stop, interrupted='stopped')\n")
    script = "import sys; from gpt.entry_points import entry_point; sys.exit(entry_point('gpt-train', 'slow_parse')())"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          env=child_env(PYTHONPATH=f"{child_env()['PYTHONPATH']}{os.pathsep}{tmp_path}"))
    assert (proc.returncode, proc.stderr) == (130, said)


def test_a_command_is_imported_with_the_collector_paused_and_runs_with_it_on_its_imports_frozen(tmp_path):
    (tmp_path / "probe.py").write_text("import gc\nimported = (gc.isenabled(), gc.get_freeze_count())\n"
                                       "def main(argv):\n"
                                       "    print(*imported, gc.isenabled(), gc.get_freeze_count() > 0)\n"
                                       "    return 0\n")
    script = "import sys; from gpt.entry_points import entry_point; sys.exit(entry_point('gpt-train', 'probe')())"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          env=child_env(PYTHONPATH=f"{child_env()['PYTHONPATH']}{os.pathsep}{tmp_path}"))
    assert (proc.returncode, proc.stdout.split()) == (0, ["False", "0", "True", "True"]), proc.stderr


def test_a_callers_garbage_is_collected_not_frozen_and_a_second_call_freezes_nothing(tmp_path):
    (tmp_path / "probe.py").write_text("def main(argv):\n    return 0\n")
    script = ("import gc, sys, weakref\nfrom gpt.entry_points import entry_point\n"
              "class Node: pass\n"
              "a, b = Node(), Node()\na.other, b.other = b, a\ngone = weakref.ref(a)\ndel a, b\n"
              "entry_point('gpt-train', 'probe')()\nfrozen = gc.get_freeze_count()\n"
              "entry_point('gpt-train', 'probe')()\ngc.collect()\n"
              "print(gone() is None, frozen > 0, gc.get_freeze_count() == frozen)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          env=child_env(PYTHONPATH=f"{child_env()['PYTHONPATH']}{os.pathsep}{tmp_path}"))
    assert (proc.returncode, proc.stdout.split()) == (0, ["True", "True", "True"]), proc.stderr


@pytest.mark.parametrize("given, seen", [(None, "1"), ("3", "3")])
def test_gpt_prepare_starts_numpy_with_one_blas_thread_unless_told_otherwise(tmp_path, given, seen):
    (tmp_path / "probe.py").write_text("import os\ndef main(argv):\n    print(os.environ['OPENBLAS_NUM_THREADS'])\n"
                                       "    return 0\n")
    script = ("import sys; from gpt.entry_points import PREPARE_ENVIRON, entry_point, prepare; "
              "assert prepare.environ == PREPARE_ENVIRON; "
              "sys.exit(entry_point('gpt-prepare', 'probe', environ=PREPARE_ENVIRON)())")
    env = child_env(PYTHONPATH=f"{child_env()['PYTHONPATH']}{os.pathsep}{tmp_path}")
    env.pop("OPENBLAS_NUM_THREADS", None)
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, seen), proc.stderr


def test_every_installed_command_starts_through_an_entry_point_that_loads_no_torch():
    import importlib
    import re

    from gpt import entry_points

    scripts = dict(re.findall(r'^(gpt-[a-z]+) = "gpt\.entry_points:(\w+)"$', (ROOT / "pyproject.toml").read_text(),
                              re.M))
    assert set(scripts) == {"gpt-prepare", "gpt-train", "gpt-sample", "gpt-eval", "gpt-plot", "gpt-export", "gpt-prune",
                            "gpt-serve"}
    for prog, name in scripts.items():
        launcher = getattr(entry_points, name)
        assert launcher.prog == prog and callable(importlib.import_module(launcher.module).main)
    loaded = subprocess.run([sys.executable, "-c",
                             "import sys, gpt.entry_points; print(sorted({'torch', 'numpy'} & set(sys.modules)))"],
                            capture_output=True, text=True, env=child_env(), timeout=60)
    assert loaded.stdout.strip() == "[]", loaded.stderr


def test_shard_ids_outside_the_vocabulary_are_one_line(data, tmp_path):
    import shutil

    import numpy as np

    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    shard = broken / "train_0000.bin"
    raw = bytearray(shard.read_bytes())
    raw[32:] = np.full(len(raw) - 32, 250, np.uint8).tobytes()  # ids far past this small vocabulary
    shard.write_bytes(bytes(raw))
    proc = run_cli("gpt.train", "--data", broken, "--out", tmp_path / "run", "--max-iters", "2", "--quiet", *TINY_ARGS)
    assert_one_line_error(proc, "gpt-train", "outside the vocabulary")


def test_without_a_terminal_progress_is_plain_lines(data, tmp_path, monkeypatch, capsys):
    import gpt.train.progress as progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # every logged step, not every 30 s
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=10, progress=True), log=print)
    out, err = capsys.readouterr()
    assert "\r" not in out + err  # no bar redrawn into a log file
    lines = out.splitlines()
    assert any(line.startswith("step 5/10: loss ") and "tok/s" in line for line in lines), out
    assert any("best so far: saved as best.pt" in line for line in lines)


class Terminal(io.StringIO):
    """A stream that says it is a terminal: where gpt-train draws its progress bar."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("max_time,total", [(None, 2000), (8.0, None)])
def test_the_bar_counts_towards_the_step_budget_only_when_no_time_budget_may_end_the_run_first(monkeypatch, max_time,
                                                                                              total):
    monkeypatch.setattr(sys, "stderr", Terminal())
    progress = Progress(True, 0, max_iters=2000, max_time=max_time, log=lambda line: None)
    assert progress.bar.total == total  # 2,000 steps would not be reached in 8 s: no time left counted from them
    progress.close()


def test_on_a_terminal_the_bar_shows_the_time_left_of_a_time_budget(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    progress = Progress(True, 0, max_iters=None, max_time=60.0, log=lambda line: None)
    progress.step(10, 20.0, {"train_loss": 2.5, "lr": 1e-3, "tokens_per_s": 1000.0})
    progress.close()
    assert "loss 2.5000" in screen.getvalue() and "40s left" in screen.getvalue()
