"""Pictures: gpt-train keeps progress.png up to date (and trains on without matplotlib, saying
once how to get it); gpt-plot overlays runs against steps, tokens or time, as PNG or SVG."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from gpt.plot import PICTURE_FILE, ProgressPicture, draw_progress, draw_runs, read_run
from gpt.plot.cli import main
from gpt.train import train
from tests.helpers import TINY_MODEL, assert_one_line_error, prepared

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepared(tmp_path_factory.mktemp("plot"))


def tiny_run(data, out: Path, **kw):
    return train(overrides={**TINY_MODEL, "data": str(data), "out": str(out), "device": "cpu", "max_iters": 20, **kw},
                 log=lambda s: None)


def without_matplotlib(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed


def write_metrics(run: Path, steps: int = 50, scale: float = 1.0) -> Path:
    """A run folder with a metrics.jsonl as gpt-train writes it: a line per 5 steps, an evaluation per 10."""
    run.mkdir(parents=True)
    lines = []
    for step in range(5, steps + 1, 5):
        base = {"step": step, "tokens": step * 256, "elapsed": step * 0.5}
        lines.append({**base, "train_loss": scale * (1 + 3 / step), "lr": 1e-3, "tokens_per_s": 500.0})
        if step % 10 == 0:
            lines.append({**base, "train_loss": scale * (1 + 3 / step), "val_loss": scale * (1.1 + 3 / step),
                          "val_bpc": 1.6})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


# -- the picture in the run folder -----------------------------------------------------------------
def test_training_keeps_a_picture_of_its_run(data, tmp_path):
    pytest.importorskip("matplotlib")
    tiny_run(data, tmp_path / "run")
    picture = tmp_path / "run" / PICTURE_FILE
    assert picture.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]  # written atomically


def test_the_picture_shows_loss_against_steps_and_time_the_learning_rate_and_throughput(tmp_path):
    pytest.importorskip("matplotlib")
    fig = draw_progress(read_run(write_metrics(tmp_path / "run")))
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    assert labels == [("step", "loss (nats/token)"), ("training time (minutes)", "loss (nats/token)"),
                      ("step", "learning rate"), ("step", "tokens/s")]

    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train", "val"]


def test_without_matplotlib_training_goes_on_and_says_once_how_to_get_pictures(data, tmp_path, monkeypatch):
    without_matplotlib(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tiny_run(data, tmp_path / "run", max_iters=30)  # three evaluations and the end
    said = [str(w.message) for w in caught if "matplotlib" in str(w.message)]
    assert len(said) == 1 and "pip install" in said[0]
    assert result.step == 30 and not (tmp_path / "run" / PICTURE_FILE).exists()


def test_a_picture_that_fails_never_stops_training(data, tmp_path, monkeypatch):
    def broken(run):
        raise RuntimeError("no room for pictures")

    monkeypatch.setattr("gpt.plot.live.draw_progress", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tiny_run(data, tmp_path / "run")
    assert result.step == 20
    assert len([w for w in caught if "no room for pictures" in str(w.message)]) == 1


def test_only_the_writing_rank_draws(tmp_path):
    run = write_metrics(tmp_path / "run")
    ProgressPicture(run, enabled=False).update(final=True)
    assert not (run / PICTURE_FILE).exists()


def test_a_line_cut_short_by_a_crash_is_left_out(tmp_path):
    run = write_metrics(tmp_path / "run", steps=20)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "tokens": 64')
    metrics = read_run(run)
    assert [r["step"] for r in metrics.logged] == [5, 10, 15, 20] and [r["step"] for r in metrics.evals] == [10, 20]


def test_the_last_train_loss_of_a_run_that_ends_between_log_lines_is_drawn(tmp_path):
    run = write_metrics(tmp_path / "run", steps=20)
    with open(run / "metrics.jsonl", "a") as f:  # the run's end, at step 23: an evaluation only
        f.write(json.dumps({"step": 23, "tokens": 5888, "elapsed": 11.5, "train_loss": 1.05, "val_loss": 1.2}) + "\n")
    metrics = read_run(run)
    assert metrics.series(metrics.logged, "step", "train_loss") == ([5, 10, 15, 20, 23], [1.6, 1.3, 1.2, 1.15, 1.05])
    assert metrics.series(metrics.logged, "step", "lr")[0] == [5, 10, 15, 20]  # nothing else is made up


def test_fields_that_are_not_numbers_are_left_out_and_the_rest_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    run = write_metrics(tmp_path / "run", steps=20)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "val_loss": null}\n{"step": 30, "val_loss": "low"}\n'
                '{"step": [1], "train_loss": {"a": 1}}\n')
    metrics = read_run(run)
    assert ([r["step"] for r in metrics.evals] == [10, 20]
            and [r["step"] for r in metrics.logged] == [5, 10, 15, 20, 25, 30])
    assert main([str(run), "--out", str(tmp_path / "p.png")]) == 0


@pytest.mark.parametrize("name", ["r$\\q$x", "odd\udcffname"])  # a formula to matplotlib; a name that is no UTF-8
def test_a_run_named_oddly_is_drawn_with_its_name_as_it_is(tmp_path, name):
    pytest.importorskip("matplotlib")
    run = write_metrics(tmp_path / name, steps=20)
    out = tmp_path / "p.png"
    assert main([str(run), "--out", str(out)]) == 0 and out.read_bytes()[:8] == PNG_MAGIC
    fig = draw_progress(read_run(run))  # the picture gpt-train keeps, titled by the run's name as it is
    fig.canvas.draw()  # a formula or an unencodable name would fail here, where matplotlib lays text out
    shown = {"r$\\q$x": "r$\\q$x", "odd\udcffname": "odd\\xffname"}[name]  # a name that is no UTF-8: its bytes escaped
    assert fig._suptitle.get_text().replace("\\$", "$").startswith(shown)


# -- gpt-plot --------------------------------------------------------------------------------------
def test_several_runs_on_one_picture_against_steps_tokens_or_time(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    runs = [write_metrics(tmp_path / "lr-1e-3"), write_metrics(tmp_path / "lr-3e-3", scale=0.9)]
    fig = draw_runs([read_run(r) for r in runs], x="tokens")
    for ax in fig.axes:
        assert [line.get_label().split()[0] for line in ax.get_lines()] == ["lr-1e-3", "lr-3e-3"]
        assert ax.get_xlabel() == "tokens seen"
    for x in ("step", "tokens", "time"):
        out = tmp_path / f"{x}.png"
        assert main([*map(str, runs), "--x", x, "--out", str(out)]) == 0
        assert out.read_bytes()[:8] == PNG_MAGIC
    assert "wrote" in capsys.readouterr().out


def test_a_run_with_a_single_logged_point_is_drawn_with_a_marker(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [read_run(write_metrics(tmp_path / "long")), read_run(write_metrics(tmp_path / "short", steps=5))]
    for fig in (draw_runs(runs), draw_progress(runs[1])):
        one_point = [line for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata()) == 1]
        # a line of one point shows nothing
        assert one_point and all(line.get_marker() not in (None, "", "None") for line in one_point)


def test_svg_when_asked(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "runs.svg"
    assert main([str(write_metrics(tmp_path / "run")), "--out", str(out)]) == 0
    assert b"<svg" in out.read_bytes()[:2000]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_a_picture_of_its_own_is_replaced_and_anything_else_only_with_force(tmp_path, capsys, suffix):
    pytest.importorskip("matplotlib")
    run = write_metrics(tmp_path / "run")
    out = tmp_path / f"runs{suffix}"
    for _ in range(2):  # drawn again: its own picture, replaced
        assert run_main(capsys, run, "--out", out).returncode == 0
    mine, link = tmp_path / f"essay{suffix}", tmp_path / f"link{suffix}"
    mine.write_bytes(b"the user's own file")
    link.symlink_to(tmp_path / "notes.txt")
    for path, what in ((mine, "a file gpt-plot did not write"), (link, "a link")):
        assert_one_line_error(run_main(capsys, run, "--out", path), "gpt-plot", f"is {what}", "--force")
    assert mine.read_bytes() == b"the user's own file" and link.is_symlink()
    assert run_main(capsys, run, "--out", mine, "--force").returncode == 0
    assert mine.read_bytes() != b"the user's own file"


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_bad_input_gets_one_clear_line(tmp_path, capsys, monkeypatch):
    run = write_metrics(tmp_path / "run")
    (tmp_path / "not_a_run").mkdir()
    assert_one_line_error(run_main(capsys, tmp_path / "nope"), "gpt-plot", "does not exist")
    assert_one_line_error(run_main(capsys, tmp_path / "not_a_run"), "gpt-plot", "no metrics.jsonl")
    (tmp_path / "starting").mkdir()  # a run before its first step: config.json and .lock, no metrics yet
    (tmp_path / "starting" / "config.json").write_text('{"model": {}, "train": {}}')
    (tmp_path / "starting" / ".lock").touch()
    assert_one_line_error(run_main(capsys, tmp_path / "starting"), "gpt-plot", "has no metrics.jsonl yet: its run has "
                                                                               "logged no step so far")
    (tmp_path / "notes.txt").write_text("some words, not a run's metrics\n")
    assert_one_line_error(run_main(capsys, tmp_path / "notes.txt"), "gpt-plot",
                          f"no gpt-train metrics records (JSON lines with a step) in {tmp_path / 'notes.txt'}")
    assert_one_line_error(run_main(capsys, run, "--out", tmp_path / "runs.jpg"), "gpt-plot", ".png or .svg")
    assert_one_line_error(run_main(capsys, run, "--out", tmp_path), "gpt-plot", "is a folder: --out names the picture")
    assert_one_line_error(run_main(capsys, run, "--out", ""), "gpt-plot", "--out is empty")
    proc = run_main(capsys, run, "--out", tmp_path / "nodir" / "runs.png")
    assert_one_line_error(proc, "gpt-plot", f"the folder {tmp_path / 'nodir'} does not exist")  # the folder is named
    without_matplotlib(monkeypatch)
    assert_one_line_error(run_main(capsys, run, "--out", tmp_path / "runs.png"), "gpt-plot", "matplotlib",
                          "pip install")
