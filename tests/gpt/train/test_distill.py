"""Distillation (gpt-train --teacher): the loss it adds, a student of another size learning
from a trained teacher, exact resume, LoRA, and the refusals: a teacher that is not a model,
one of another vocabulary, one that changed under a resumed run, weights and temperatures
out of range."""
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from gpt.store import checkpoint as ck
from gpt.train import TrainError, train
from gpt.train.distill import Teacher
from tests.gpt.train.test_finetune import another_vocabulary
from tests.helpers import TINY_MODEL, assert_one_line_error, run_cli, tiny_run, train_tiny_model, untrained_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)
STUDENT = dict(n_layer=1, n_head=2, n_embd=16)


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(overrides=tiny_run(data, out, max_iters=40), log=lambda s: None)
    return out


def student(data, out, teacher, **kw):
    return {**TINY_MODEL, **STUDENT, "data": str(data), "out": str(out), "device": "cpu", "teacher": str(teacher),
            "max_iters": 20, **kw}


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_loss_mixes_cross_entropy_with_the_softened_kl_to_the_teacher():
    model, _, _ = train_tiny_model(steps=5)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    teacher = Teacher(model, {}, torch.device("cpu"), weight=0.25, temperature=2.0)
    hard = torch.tensor(3.0)
    with torch.no_grad():
        same = model(x)[0]
    assert teacher.loss(x, same, hard).item() == pytest.approx(0.75 * 3.0, abs=1e-5)  # no soft term against itself
    other = same + torch.randn_like(same)
    p, q = F.softmax(same / 2, -1), F.log_softmax(other / 2, -1)
    kl = (p * (p.log() - q)).sum(-1).mean() * 4  # per token, x T^2
    assert teacher.loss(x, other, hard).item() == pytest.approx(0.75 * 3.0 + 0.25 * kl.item(), rel=1e-4)
    assert teacher.seconds > 0


def test_a_smaller_student_learns_from_the_teacher_and_its_time_is_reported(data, teacher, tmp_path):
    result = train(overrides=student(data, tmp_path / "s", teacher), log=lambda s: None)
    plain = train(overrides={**student(data, tmp_path / "p", teacher), "teacher": None}, log=lambda s: None)
    assert result.val_loss < untrained_loss(data) - 0.3
    assert result.val_loss != plain.val_loss  # the teacher changed the training
    timed = [r["teacher_s"] for r in metrics(tmp_path / "s") if "teacher_s" in r]
    assert timed and timed[-1] > 0
    saved = ck.load_checkpoint(tmp_path / "s" / "latest.pt")
    assert saved["teacher"]["path"] == str((teacher / "best.pt").resolve()) and len(saved["teacher"]["sha256"]) == 64


def test_a_distilled_run_resumes_exactly(data, teacher, tmp_path):
    kw = dict(max_iters=16, dropout=0.1, eval_interval=5)
    whole = train(overrides=student(data, tmp_path / "whole", teacher, **kw), log=lambda s: None)
    first = train(overrides=student(data, tmp_path / "split", teacher, **kw), should_stop=lambda s: s == 7,
                  log=lambda s: None)
    rest = train(overrides={"out": str(tmp_path / "split"), "progress": False}, resume=True, log=lambda s: None)
    assert dict(first.history + rest.history) == dict(whole.history)


def test_a_resumed_run_refuses_a_teacher_that_changed(data, teacher, tmp_path):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy)
    train(overrides=student(data, tmp_path / "run", copy, max_iters=4), log=lambda s: None)
    state = ck.load_checkpoint(copy / "best.pt")
    state["model"]["wte.weight"] += 1.0
    ck.save_checkpoint(copy / "best.pt", state)
    with pytest.raises(TrainError, match="not the file this run was distilled from"):
        train(overrides={"out": str(tmp_path / "run"), "progress": False, "max_iters": 8}, resume=True,
              log=lambda s: None)


def test_lora_on_a_base_learns_from_a_teacher(data, teacher, tmp_path):
    result = train(overrides={"data": str(data), "out": str(tmp_path / "lora"), "device": "cpu", "progress": False,
                              "init_from": str(teacher), "lora": 2, "teacher": str(teacher), "max_iters": 6,
                              "max_time": 0, "batch_size": 8, "eval_windows": 16, "eval_interval": 3},
                   log=lambda s: None)
    assert math.isfinite(result.val_loss)


def test_a_teacher_of_another_vocabulary_is_one_line_naming_vocab_from(teacher, tmp_path):
    other = another_vocabulary(tmp_path)
    proc = run_cli("gpt.train", "--data", other, "--out", tmp_path / "run", "--teacher", teacher, "--max-iters", "2")
    assert_one_line_error(proc, "gpt-train", "different vocabulary", f"--vocab-from {teacher}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--teacher", "no-such-run"], "no such run"),
    (["--distill-weight", "0"], "--distill-weight"),
    (["--distill-weight", "1.5"], "--distill-weight"),
    (["--distill-temperature", "0"], "--distill-temperature"),
    (["--distill-temperature", "nan"], "--distill-temperature"),
    (["--distill-temperature", "1e-300"], "between 0.001 and 1000"),
])
def test_bad_distillation_options_are_one_line(data, teacher, tmp_path, args, fragment):
    full = ["--teacher", str(teacher), *args] if args[0] != "--teacher" else args
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--max-iters", "2", *full, cwd=tmp_path)
    assert_one_line_error(proc, "gpt-train", fragment)
    assert not (tmp_path / "run").exists()


def test_a_teacher_with_a_shorter_context_than_the_student_is_one_line(data, teacher, tmp_path):
    context = json.loads((teacher / "config.json").read_text())["model"]["block_size"]
    proc = run_cli("gpt.train", "--data", data, "--out", tmp_path / "run", "--teacher", teacher, "--max-iters", "2",
                   "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", str(2 * context),
                   "--device", "cpu")
    assert_one_line_error(proc, "gpt-train", f"reads at most {context} tokens", f"--block-size {context} or less")
    assert not (tmp_path / "run").exists()
