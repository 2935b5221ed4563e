"""The training code's parts, one behaviour each: presets, the schedule, the optimizer's
groups, the window index, the stop flag, the metrics log, compile fallback, fp16 scaling."""
import json
import math
import os
import re
import signal
import warnings

import numpy as np
import pytest
import torch

from gpt import device
from gpt.config import ConfigError, ModelConfig, TrainConfig
from gpt.model import build_model
from gpt.store import checkpoint as ck
from gpt.train import train
from gpt.train.batches import BlockSizeError, WindowIndex
from gpt.train.cli import build_parser
from gpt.train.metrics import MetricsLog
from gpt.train.optim import make_optimizer
from gpt.train.presets import PRESETS, default_preset, layered_config
from gpt.train.schedule import learning_rate
from gpt.train.signals import StopFlag
from tests.helpers import StepClock, tiny_run


# -- presets -------------------------------------------------------------------------------
def test_a_model_option_overrides_only_itself_and_the_preset_stays():
    cfg = layered_config("cpu-small", {"n_layer": 2, "lr": None})
    assert cfg.n_layer == 2
    assert (cfg.block_size, cfg.batch_size, cfg.n_embd, cfg.lr, cfg.max_time) == (64, 24, 128, 5e-3, 600)


def test_the_default_preset_follows_the_device_and_the_model():
    assert default_preset("cpu") == "cpu-small" and default_preset("mps") == "cpu-small"
    assert default_preset("cuda") == "baby-gpt"
    assert default_preset("cuda", "bigram") == default_preset("cpu", "bigram") == "bigram"


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_a_cpu_in_bf16_only_where_it_is_native_and_samples_in_fp32(monkeypatch, native):
    monkeypatch.setattr(device, "native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert device.resolve_dtype("auto", cpu, training=True) == (torch.bfloat16 if native else torch.float32)
    assert device.resolve_dtype("auto", cpu) == torch.float32  # sampling and scoring


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
def test_bf16_is_not_native_where_onednn_is_capped_below_its_bf16_instructions(monkeypatch, variable):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)  # a CPU that has them
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    assert device.native_bf16()
    monkeypatch.setenv(variable, "avx2")
    assert not device.native_bf16()
    assert device.resolve_dtype("auto", torch.device("cpu"), training=True) == torch.float32
    monkeypatch.setenv(variable, "AVX512_CORE_AMX")
    assert device.native_bf16()


def test_bf16_attention_on_a_cpu_follows_fp32_and_trains():
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    x = torch.randint(0, 20, (4, 17))
    _, exact = model(x[:, :-1], x[:, 1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # attention takes the plain path in bf16
        _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    assert abs(loss.item() - exact.item()) < 0.02 * exact.item()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_help_shows_the_value_each_default_preset_gives_and_says_options_keep_the_preset(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse would wrap "cpu-small" at its hyphen
    text = build_parser().format_help()
    for name in ("block_size", "batch_size", "lr", "max_iters", "max_time", "optimizer", "n_layer"):
        for preset in ("cpu-small", "baby-gpt", "bigram"):
            value = PRESETS[preset].get(name, getattr(TrainConfig(), name))
            shown = f"{'none' if value is None else value} ({preset})"
            # the bigram is one table: the transformer's shape and optimizer are not its
            assert (shown in text) == (preset != "bigram" or name not in ("optimizer", "n_layer")), (name, preset)
    preset_help = text[text.index("  --preset"):text.index("\nmodel:")]
    assert "override its values" in preset_help and "bigram for --model bigram" in preset_help

def test_choosing_the_bigram_brings_its_preset(data, tmp_path):
    result = train(overrides=tiny_run(data, tmp_path / "run", model="bigram", max_iters=3, lr=None, block_size=None),
                   log=lambda s: None)
    saved = ck.load_checkpoint(result.run_dir / "latest.pt")["train_config"]
    assert saved["preset"] == "bigram" and saved["lr"] == PRESETS["bigram"]["lr"] and saved["weight_decay"] == 0.0


def test_unknown_config_keys_are_refused_like_the_models():
    with pytest.raises(ConfigError, match="unknown TrainConfig fields: n_layers"):
        TrainConfig.from_dict({"n_layers": 3})
    with pytest.raises(ConfigError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"n_layers": 3})


def test_the_model_options_build_the_model_config():
    cfg = TrainConfig(model="gpt", n_layer=3, n_head=2, n_embd=16, block_size=8, dropout=0.1, pos="learned", bias=True)
    m = cfg.model_config(vocab_size=50)
    assert (m.kind, m.vocab_size, m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, m.pos, m.bias) == (
        "gpt", 50, 3, 2, 16, 8, 0.1, "learned", True)


# -- schedule and optimizer ------------------------------------------------------------------
def test_warmup_rises_linearly_then_cosine_decays_to_the_floor():
    lrs = [learning_rate(s, 0.0, 1.0, 0.1, 4) for s in range(4)]
    assert lrs == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(10, 0.0, 1.0, 0.1, 4) == 1.0
    assert learning_rate(10, 0.5, 1.0, 0.1, 4) == pytest.approx(0.55)
    assert learning_rate(10, 1.0, 1.0, 0.1, 4) == pytest.approx(0.1)
    assert learning_rate(10, 7.0, 1.0, 0.1, 4) == pytest.approx(0.1)  # past the budget: the floor


def test_weight_decay_applies_to_matrices_only():
    model = build_model(ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=True))
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.99), torch.device("cpu"))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


# -- windows ---------------------------------------------------------------------------------
def test_shards_shorter_than_a_window_are_skipped():
    index = WindowIndex([np.arange(5), np.arange(100, 150), np.arange(3)], block_size=8)
    assert index.num_windows == 50 - 8
    x, y = index.gather(np.arange(index.num_windows))
    assert int(x.min()) >= 100


def test_windows_never_cross_a_shard_boundary():
    index = WindowIndex([np.arange(0, 20), np.arange(1000, 1020)], block_size=4)
    x, y = index.gather(np.arange(index.num_windows))
    rows = torch.cat([x, y[:, -1:]], dim=1)
    assert bool(((rows[:, 1:] - rows[:, :-1]) == 1).all())  # each window is consecutive ids of one shard
    assert {int(r[0]) for r in rows} == set(range(0, 16)) | set(range(1000, 1016))


def test_no_shard_long_enough_is_a_clear_error():
    with pytest.raises(BlockSizeError, match="longest shard holds 5 tokens"):
        WindowIndex([np.arange(5)], block_size=8)


# -- stopping --------------------------------------------------------------------------------
def test_a_second_ctrl_c_interrupts_at_once():
    stop = StopFlag()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT  # the first only asks for a stop at the next step boundary
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_a_sigterm_after_the_first_signal_is_the_same_request(first):
    """torchrun passes Ctrl-C on to its workers, then sends SIGTERM, and may send SIGTERM
    twice: the run still saves."""
    stop = StopFlag()
    stop.install()
    try:
        os.kill(os.getpid(), first)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == first
    finally:
        stop.restore()


# -- metrics, compile, fp16 ------------------------------------------------------------------
def test_metrics_after_the_resumed_checkpoint_are_dropped(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (10, 20, 30, 40):
        log.write({"step": step, "train_loss": 1.0})
    log.close()
    log.trim_after(20)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10, 20]


def test_resume_trims_the_crashed_tail_of_metrics(data, tmp_path):
    train(overrides=tiny_run(data, tmp_path / "run", max_iters=10), log=lambda s: None)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 15, "train_loss": 9.0}) + "\n")  # logged after the checkpoint, then a crash
    train(overrides={"out": str(tmp_path / "run"), "max_iters": 20, "progress": False}, resume=True, log=lambda s: None)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and 9.0 not in [
        json.loads(line).get("train_loss") for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_a_failing_compile_falls_back_to_eager_with_a_warning(data, tmp_path, monkeypatch):
    def broken_compile(model, **kw):
        def fails(*a, **k):
            raise RuntimeError("backend exploded")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(overrides=tiny_run(data, tmp_path / "run", max_iters=5, compile=True), log=lambda s: None)
    assert result.step == 5 and math.isfinite(result.val_loss)
    assert any("torch.compile failed (RuntimeError: backend exploded); training in eager mode" in str(w.message)
               for w in caught)


def test_the_fp16_gradient_scaler_is_saved_and_restored(data, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on a CPU warns that it is slow
        train(overrides=tiny_run(data, tmp_path / "run", max_iters=5, dtype="fp16"), log=lambda s: None)
        saved = ck.load_checkpoint(tmp_path / "run" / "latest.pt")["scaler"]
        assert saved is not None and saved["scale"] > 0
        from gpt.train.distributed import Dist
        from gpt.train.run import resumed_config
        from gpt.train.trainer import Trainer

        state = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
        cfg = resumed_config(state["train_config"], {"max_iters": 10})
        trainer = Trainer(cfg, Dist(), torch.device("cpu"), state, tmp_path / "run", log=lambda s: None)
    assert trainer.scaler.is_enabled() and trainer.scaler.state_dict()["scale"] == saved["scale"]
    assert trainer.scaler.state_dict()["_growth_tracker"] == saved["_growth_tracker"]


# -- early stopping --------------------------------------------------------------------------
def test_early_stopping_is_on_under_step_and_time_budgets_alike():
    assert TrainConfig(max_iters=100, max_time=None).early_stop_after == 5
    assert TrainConfig(max_iters=None, max_time=60).early_stop_after == 5  # a time budget overfits too
    assert TrainConfig(max_iters=100, patience=0).early_stop_after == 0


def test_a_run_stops_after_patience_evaluations_without_improvement_and_says_so_on_resume(data, tmp_path, monkeypatch):
    from gpt.train import TrainError
    from gpt.train.trainer import Trainer

    losses = iter([2.0, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: next(losses))
    result = train(overrides=tiny_run(data, tmp_path / "run", max_iters=100, eval_interval=2, patience=3),
                   log=lambda s: None)
    assert result.stopped_by == "patience" and result.step == 10
    assert result.best_val_loss == 1.5 and result.best_step == 4
    assert ck.load_checkpoint(tmp_path / "run" / "best.pt")["step"] == 4
    with pytest.raises(TrainError, match="stopped early.*--patience"):
        train(overrides={"out": str(tmp_path / "run"), "progress": False}, resume=True, log=lambda s: None)
    again = train(overrides={"out": str(tmp_path / "run"), "progress": False, "patience": 10, "max_iters": 14},
                  resume=True, log=lambda s: None)
    assert again.step == 14


# -- cooldown ----------------------------------------------------------------------------------
def rising_after(best_step: int):
    """An evaluation whose loss falls to `best_step`, then rises: the shape of overfitting."""
    return lambda self: 3.0 - 0.1 * min(self.step, best_step) + 0.1 * max(self.step - best_step, 0)


def logged_lr(run) -> dict:
    return {r["step"]: r["lr"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r}


def cooled_run(data, tmp_path, monkeypatch, max_iters: int):
    """A run whose val loss rises after step 8, with patience 2 and a cooldown of half the steps so far."""
    from gpt.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", rising_after(8))
    run = tmp_path / "run"
    options = dict(max_iters=max_iters, eval_interval=2, patience=2, cooldown=0.5, lr=1e-2, min_lr=1e-3, warmup_iters=0,
                   log_interval=1)
    return run, train(overrides=tiny_run(data, run, **options), log=lambda s: None)


def test_a_cooldown_decays_the_rate_to_min_lr_once_patience_runs_out_then_stops(data, tmp_path, monkeypatch):
    run, result = cooled_run(data, tmp_path, monkeypatch, max_iters=100)
    # stale evaluations at steps 10 and 12: the cooldown starts at 12, for 6 steps
    assert result.stopped_by == "cooldown" and result.step == 18 and result.best_step == 8
    lr = logged_lr(run)
    start = lr[12]  # the last step's rate before it, the cosine's: a straight line from it to --min-lr
    assert [lr[s] for s in range(13, 19)] == pytest.approx([start + (1e-3 - start) * k / 6 for k in range(1, 7)])
    assert ck.load_checkpoint(run / "latest.pt")["cooldown"]["start"] == 12


def test_a_cooldown_cut_short_by_the_step_budget_still_reaches_min_lr_at_its_end(data, tmp_path, monkeypatch):
    run, result = cooled_run(data, tmp_path, monkeypatch, max_iters=15)
    assert result.stopped_by == "max_iters" and result.step == 15  # 3 of the cooldown's 6 steps, then the budget
    lr = logged_lr(run)
    assert [lr[s] for s in (13, 14, 15)] == pytest.approx([lr[12] + (1e-3 - lr[12]) * k / 3 for k in (1, 2, 3)])
    assert ck.load_checkpoint(run / "latest.pt")["step"] == 15  # step 15 is not an evaluation step: the end evaluates


def test_a_cooldown_under_a_time_budget_reaches_min_lr_as_the_time_runs_out(data, tmp_path, monkeypatch):
    """On a clock that advances a fixed amount per reading, as the time-budget tests do."""
    import gpt.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "time", StepClock())
    monkeypatch.setattr(trainer_module.Trainer, "evaluate", rising_after(14))
    run = tmp_path / "run"
    options = dict(max_iters=None, max_time=1.2, eval_interval=2, cooldown=1.0, patience=2, lr=1e-2, min_lr=1e-3,
                   warmup_iters=0, log_interval=1)
    result = train(overrides=tiny_run(data, run, **options), log=lambda s: None)
    lr = logged_lr(run)
    # the cooldown starts at step 18 for 18 steps, but the clock runs out first: the rate
    # falls by time, faster than by steps, and is all but --min-lr at the last step
    assert result.stopped_by == "max_time" and 18 < result.step < 36
    steps = sorted(s for s in lr if s > 18)
    assert all(lr[a] > lr[b] for a, b in zip(steps, steps[1:]))
    by_steps = lr[18] + (1e-3 - lr[18]) * (result.step - 18) / 18
    assert lr[result.step] - 1e-3 < 0.25 * (by_steps - 1e-3)


def test_a_run_stopped_in_its_cooldown_resumes_it_step_for_step(data, tmp_path, monkeypatch):
    from gpt.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", rising_after(8))
    kw = dict(max_iters=100, eval_interval=2, patience=2, cooldown=0.5, warmup_iters=0, log_interval=1)
    whole = train(overrides=tiny_run(data, tmp_path / "whole", **kw), log=lambda s: None)
    first = train(overrides=tiny_run(data, tmp_path / "split", **kw), should_stop=lambda step: step == 15,
                  log=lambda s: None)
    rest = train(overrides={"out": str(tmp_path / "split"), "progress": False}, resume=True, log=lambda s: None)
    assert rest.stopped_by == "cooldown" and rest.step == whole.step == 18
    assert dict(first.history + rest.history) == dict(whole.history)
    assert logged_lr(tmp_path / "split") == logged_lr(tmp_path / "whole")


def test_a_finished_cooldown_is_not_resumed_unless_asked(data, tmp_path, monkeypatch):
    from gpt.train import TrainError
    from gpt.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", rising_after(8))
    run = tmp_path / "run"
    train(overrides=tiny_run(data, run, max_iters=100, eval_interval=2, patience=2, cooldown=0.5), log=lambda s: None)
    with pytest.raises(TrainError, match="ended with its cooldown at step 18.*--cooldown 0 --patience 0"):
        train(overrides={"out": str(run), "progress": False}, resume=True, log=lambda s: None)
    again = train(overrides={"out": str(run), "progress": False, "cooldown": 0.0, "patience": 0, "max_iters": 22},
                  resume=True, log=lambda s: None)
    assert again.step == 22 and again.stopped_by == "max_iters"


def test_a_run_that_stopped_early_cools_down_when_resumed_with_a_cooldown(data, tmp_path, monkeypatch):
    from gpt.train.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", rising_after(8))
    run = tmp_path / "run"
    options = dict(max_iters=100, eval_interval=2, patience=2, lr=1e-2, min_lr=1e-3, warmup_iters=0, log_interval=1)
    assert train(overrides=tiny_run(data, run, **options), log=lambda s: None).stopped_by == "patience"  # at step 12
    result = train(overrides={"out": str(run), "progress": False, "cooldown": 0.5}, resume=True, log=lambda s: None)
    assert result.stopped_by == "cooldown" and result.step == 18
    lr = logged_lr(run)
    start = learning_rate(12, 12 / 100, 1e-2, 1e-3, 0)  # the schedule's rate where the run stopped
    assert [lr[s] for s in range(13, 19)] == pytest.approx([start + (1e-3 - start) * k / 6 for k in range(1, 7)])


@pytest.mark.parametrize("option,value,message", [
    ("beta1", 2.0, "--beta1 must be in [0, 1)"),
    ("beta2", math.nan, "--beta2 must be in [0, 1)"),
    ("seed", -1, "--seed must be in [0, 2^32)"),
    ("seed", 10**20, "--seed must be in [0, 2^32)"),
    ("lr", math.inf, "--lr must be positive"),
    ("weight_decay", math.nan, "--weight-decay must be 0 or more"),
    ("weight_decay", -1.0, "--weight-decay must be 0 or more"),
    ("grad_clip", -1.0, "--grad-clip must be 0 or more"),
    ("max_time", math.nan, "--max-time must be positive"),
    ("logit_softcap", math.inf, "--logit-softcap must be positive"),
    ("lora_alpha", math.nan, "--lora-alpha must be positive"),
])
def test_numbers_that_would_fail_later_or_train_into_nan_are_refused_at_once(option, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(max_iters=10, **{option: value}).validate()


def test_cooldown_options_are_checked():
    assert TrainConfig(max_iters=None, max_time=60, cooldown=0.25).early_stop_after == 5  # patience comes on with it
    with pytest.raises(ConfigError, match="--cooldown must be a fraction"):
        TrainConfig(max_iters=10, cooldown=1.5).validate()
    with pytest.raises(ConfigError, match="--patience 0 never does"):
        TrainConfig(max_iters=10, cooldown=0.25, patience=0).validate()


def test_a_torn_last_metrics_line_is_dropped_on_trim(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "train_loss": 1.0}\n{"step": 20, "train_lo')
    MetricsLog(tmp_path).trim_after(20)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 10, "train_loss": 1.0}\n'


def test_damaged_metrics_lines_are_dropped_on_trim_not_a_failure_to_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 10, "train_loss": 1.0}\n{"step": null}\n{"step": "5"}\n'
                                             b'[1, 2]\n{"step": 12\xff}\n{"step": 11}\n')
    MetricsLog(tmp_path).trim_after(20)
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 10, "train_loss": 1.0}\n{"step": 11}\n'


def test_optimizer_options_given_on_resume_apply(data, tmp_path):
    from gpt.train.distributed import Dist
    from gpt.train.run import resumed_config
    from gpt.train.trainer import Trainer

    train(overrides=tiny_run(data, tmp_path / "run", max_iters=5), log=lambda s: None)
    state = ck.load_checkpoint(tmp_path / "run" / "latest.pt")
    cfg = resumed_config(state["train_config"], {"max_iters": 10, "weight_decay": 0.0, "beta2": 0.9})
    trainer = Trainer(cfg, Dist(), torch.device("cpu"), state, tmp_path / "run", log=lambda s: None)
    assert [g["weight_decay"] for g in trainer.optimizers.adamw.param_groups] == [0.0, 0.0]
    assert all(g["betas"] == (0.9, 0.9) for g in trainer.optimizers.adamw.param_groups)
    assert trainer.optimizers.adamw.state  # the moments themselves were restored


@pytest.mark.parametrize("world, local, said", [
    (None, None, "gpt-train --resume --out runs/a"),
    ("2", "2", "torchrun --nproc_per_node=2 -m gpt.train --resume --out runs/a"),
    ("4", "2", "torchrun with this run's 4 processes"),
])
def test_a_stopped_run_is_told_to_resume_as_it_was_started(monkeypatch, world, local, said):
    from gpt.train.cli import resume_command

    for name, value in (("WORLD_SIZE", world), ("LOCAL_WORLD_SIZE", local)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert said in resume_command("runs/a")


def test_throughput_leaves_out_the_time_spent_evaluating_and_saving(monkeypatch):
    from gpt.train import metrics

    now = [0.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    window = metrics.Throughput()
    window.add(1000)
    now[0] = 1.0
    with window.paused():  # an evaluation and a checkpoint: 10 s
        now[0] = 11.0
    window.add(1000)
    now[0] = 12.0
    assert window.rate() == pytest.approx(2000 / 2.0)  # two seconds of training, not twelve
