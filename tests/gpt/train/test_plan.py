"""gpt-train --plan: the memory a run would need, printed without training; its count of the
activations is what autograd really keeps on this machine."""
import pytest
import torch

from gpt.config import TrainConfig
from gpt.model import build_model
from gpt.train.plan import memory_plan
from tests.gpt.train.test_activation_checkpointing import saved_bytes
from tests.helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)
SHAPE = dict(n_layer=3, n_head=4, n_embd=64, block_size=128, batch_size=4, dropout=0.0)


@pytest.mark.parametrize("options", [dict(), dict(pos="rope", activation="relu2", qk_norm=True),
                                     dict(dropout=0.1), dict(activation_checkpointing=True)],
                         ids=["plain", "levers", "dropout", "checkpointing"])
def test_the_planned_activations_are_what_autograd_keeps_on_this_cpu(options):
    cfg = TrainConfig(**{**SHAPE, **options}, dtype="fp32")
    plan = memory_plan(cfg, 80, torch.float32, "cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model_config(80)).train()
    model.checkpoint_blocks = cfg.activation_checkpointing
    idx = torch.randint(0, 80, (cfg.batch_size, cfg.block_size))
    measured = saved_bytes(model, idx, idx)
    assert plan.activations(cfg.batch_size) == pytest.approx(measured, rel=0.02)


def test_plan_prints_the_memory_and_trains_nothing(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--plan", "--device", "cpu", "--n-layer", "2", "--n-embd", "32",
                   "--n-head", "2", "--block-size", "32", "--batch-size", "8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for part in ("parameters", "weights (fp32)", "gradients", "optimizer state", "activations", "peak",
                 "largest micro-batch that fits"):
        assert part in proc.stdout
    assert list(tmp_path.iterdir()) == []  # no run folder, no checkpoints/


def test_a_larger_batch_plans_more_activations_and_a_smaller_largest_fit():
    small, large = (memory_plan(TrainConfig(**{**SHAPE, "batch_size": b}), 80, torch.float32, "cpu") for b in (4, 8))
    assert large.peak(8) > small.peak(4) and small.largest_windows(small.peak(4)) == 4


def test_a_bigrams_plan_does_not_depend_on_layers_it_does_not_have():
    plans = [memory_plan(TrainConfig(model="bigram", block_size=32, batch_size=4, n_layer=n), 80, torch.float32, "cpu")
             for n in (1, 6, 12)]
    assert len({p.peak(4) for p in plans}) == 1


def test_plan_with_resume_is_one_line(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--plan", "--resume", "--out", tmp_path / "run")
    assert_one_line_error(proc, "gpt-train", "--plan")


def test_a_teacher_adds_its_weights_and_its_logits():
    cfg = TrainConfig(**SHAPE)
    alone, taught = (memory_plan(cfg, 80, torch.float32, "cpu", teacher_parameters=t) for t in (0, 10_000))
    assert taught.peak(4) - alone.peak(4) == 10_000 * 4 + 4 * 2 * SHAPE["block_size"] * 80 * 4


def test_plan_for_several_processes_shows_fsdp_beside_ddp_as_it_would_train(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--plan", "4", "--device", "cpu", "--n-layer", "2", "--n-embd", "32",
                   "--n-head", "2", "--block-size", "32", "--batch-size", "8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("memory per process"))
    assert header.split()[-2:] == ["DDP", "FSDP"] and "4 processes" in proc.stdout


def test_a_plan_fsdp_refuses_is_refused_and_a_bad_count_is_one_line(data, tmp_path):
    proc = run_cli("gpt.train", "--data", data, "--plan", "2", "--fsdp", "--optimizer", "muon", "--device", "cpu")
    assert_one_line_error(proc, "gpt-train", "--fsdp", "--optimizer muon")
    proc = run_cli("gpt.train", "--data", data, "--plan", "-3")
    assert_one_line_error(proc, "gpt-train", "--plan", "1 process or more")


def test_the_fsdp_plan_shards_the_state_and_adds_whole_blocks():
    cfg = TrainConfig(**SHAPE, optimizer="adamw")
    ddp, fsdp = (memory_plan(cfg, 80, torch.float32, "cpu", world_size=4, fsdp=f) for f in (False, True))
    assert fsdp.weights == ddp.weights // 4 and fsdp.optimizer == ddp.optimizer // 4
    assert fsdp.activations(4) == ddp.activations(4) and fsdp.peak(4) < ddp.peak(4)
