"""gpt-train --log: TensorBoard and Weights & Biases (offline) receive what metrics.jsonl holds,
read back with their own libraries; a tracker that fails mid-run is dropped with one warning;
one that is not installed, or does not exist, stops the run in one line before it starts."""
import json
import subprocess
import sys
import warnings

import pytest

from gpt.train import trackers as trackers_module
from gpt.train import train
from tests.helpers import assert_one_line_error, child_env, run_cli, tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_figure_of_metrics_jsonl(data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(overrides=tiny_run(data, run, max_iters=20, trackers="tensorboard"), log=lambda s: None)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = {(r["step"], r["val_loss"]) for r in metrics(run) if "val_loss" in r}
    seen = {(e.step, e.value) for e in events.Scalars("val_loss")}
    assert len(logged) >= 2 and {s for s, _ in seen} == {s for s, _ in logged}
    assert all(v == pytest.approx(dict(logged)[s], rel=1e-6) for s, v in seen)
    assert "train_loss" in events.Tags()["scalars"] and "lr" in events.Tags()["scalars"]


def test_wandb_offline_gets_the_run_and_its_config(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a tracker that failed would warn
        train(overrides=tiny_run(data, run, max_iters=20, trackers="wandb"), log=lambda s: None)
    [offline] = (run / "wandb").glob("offline-run-*")
    # wandb's offline record (run-ID.wandb, what `wandb sync` uploads) is a log of protobuf
    # records, whose keys and JSON values are stored as text; its client has no reader of it
    [record] = offline.glob("run-*.wandb")
    raw = record.read_bytes()
    evaluations = [r["val_loss"] for r in metrics(run) if "val_loss" in r]
    assert len(evaluations) >= 2 and all(json.dumps(v).encode() in raw for v in evaluations)
    assert b"train_loss" in raw and b"n_layer" in raw  # the figures, and the configuration

def test_a_tracker_that_fails_mid_run_is_dropped_with_one_warning(data, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")

    def full_disk(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trackers_module.TensorBoard, "write", full_disk)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(overrides=tiny_run(data, tmp_path / "run", max_iters=20, trackers="tensorboard"),
                       log=lambda s: None)
    assert result.step == 20 and len(metrics(tmp_path / "run")) > 4
    dropped = [w for w in caught if "tensorboard tracker failed" in str(w.message)]
    assert len(dropped) == 1 and "training goes on" in str(dropped[0].message)


@pytest.mark.parametrize("name", ["wandb", "tensorboard"])
def test_a_tracker_not_installed_is_one_line_naming_the_extra(data, tmp_path, name):
    blocked = "torch.utils.tensorboard" if name == "tensorboard" else name
    script = (f"import sys; sys.modules[{blocked!r}] = None  # as if not installed\n"
              "from gpt.train.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "--data", str(data), "--out", str(tmp_path / "run"),
                           "--max-iters", "2", "--log", name], capture_output=True, text=True, env=child_env(),
                          timeout=120)
    assert_one_line_error(proc, "gpt-train", f"--log {name}", "chargpt[track]")
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_is_one_line(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--max-iters", "2", "--log", "mlflow")
    assert_one_line_error(proc, "gpt-train", "--log mlflow", "tensorboard, wandb")
    assert not (tmp_path / "run").exists()
