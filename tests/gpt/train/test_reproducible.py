"""Same seed, same run: bitwise-equal reruns and resumes on a CPU, in every dtype it offers."""
import pytest
import torch

from gpt.config import ConfigError, TrainConfig
from gpt.device import native_bf16
from gpt.store import checkpoint as ck
from gpt.train import train
from gpt.train.presets import layered_config

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one thread (conftest.py)

# the dtypes this CPU trains in: bf16 only where it computes bf16 natively (else it is not offered by default)
DTYPES = ["fp32",
          pytest.param("bf16", marks=pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16"))]


def run_options(data, out, dtype, **options):
    # the cpu-small preset keeps a time budget of its own: --max-iters replaces it, and 60 steps run past its warmup
    # (50), where a learning rate that followed the clock used to part two runs
    return {"data": str(data), "out": str(out), "device": "cpu", "dtype": dtype, "preset": "cpu-small", "max_iters": 60,
            "eval_interval": 20, "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 4, "seed": 7,
            "progress": False, **options}


def final_weights(folder):
    state = ck.load_checkpoint(folder / "latest.pt")
    return {**state["model"], **{f"trained.{k}": v for k, v in state.get("trained_model", {}).items()}}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_budget_given_replaces_the_presets_as_a_whole():
    assert layered_config("cpu-small", {"max_iters": 60}).max_time is None
    assert layered_config("baby-gpt", {"max_time": 60}).max_iters is None
    both = layered_config("cpu-small", {"max_iters": 60, "max_time": 30})
    assert (both.max_iters, both.max_time) == (60, 30)


def test_a_learning_rate_given_alone_decays_to_a_tenth_of_itself_as_min_lr_says():
    from gpt.train.presets import PRESETS, finetune_config

    assert layered_config("cpu-small", {}).final_lr == PRESETS["cpu-small"]["min_lr"]  # the preset's own floor
    assert layered_config("cpu-small", {"lr": 1e-2}).final_lr == pytest.approx(1e-3)
    assert layered_config("cpu-small", {"lr": 1e-2, "min_lr": 1e-5}).final_lr == 1e-5
    base = layered_config("cpu-small", {}).model_config(vocab_size=40).to_dict()
    assert finetune_config("cpu-small", base, {}).final_lr == pytest.approx(3e-5)  # fine-tuning's 3e-4 -> 3e-5
    assert finetune_config("cpu-small", base, {"lr": 1e-3}).final_lr == pytest.approx(1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_runs_with_the_same_seed_and_options_are_bitwise_equal(data, tmp_path, dtype):
    for name in ("a", "b"):
        train("cpu-small", run_options(data, tmp_path / name, dtype), log=lambda s: None)
    assert_bitwise_equal(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_deterministic_run_stopped_at_any_step_and_resumed_ends_bitwise_equal(data, tmp_path, dtype):
    train("cpu-small", run_options(data, tmp_path / "whole", dtype, deterministic=True), log=lambda s: None)
    seen = []
    train("cpu-small", run_options(data, tmp_path / "split", dtype, deterministic=True),
          should_stop=lambda step: seen.append(torch.are_deterministic_algorithms_enabled()) or step == 37,
          log=lambda s: None)

    train(overrides={"out": str(tmp_path / "split"), "progress": False}, resume=True, log=lambda s: None)
    assert_bitwise_equal(final_weights(tmp_path / "whole"), final_weights(tmp_path / "split"))
    assert all(seen) and not torch.are_deterministic_algorithms_enabled()  # on for the run, as it was after it


def test_deterministic_under_a_time_budget_is_refused_naming_why():
    with pytest.raises(ConfigError, match="--deterministic needs a step budget alone.*follow the clock"):
        TrainConfig(max_iters=None, max_time=60, deterministic=True).validate()
