"""The schedule alone: learning rates, patience and the cooldown, with no model or clock."""
import math

import pytest

from gpt.config import TrainConfig
from gpt.train.schedule import Schedule


def schedule(**options) -> Schedule:
    cfg = TrainConfig(**{"lr": 1.0, "min_lr": 0.1, "warmup_iters": 4, "max_iters": 104, **options})
    return Schedule.from_config(cfg)


def test_the_rate_warms_up_then_decays_by_a_cosine_to_the_floor_at_the_step_budget():
    s = schedule()
    assert [s.rate(step, 0.0) for step in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s.rate(54, 0.0) == pytest.approx(0.55)  # halfway through the steps after warmup
    assert s.rate(104, 0.0) == pytest.approx(s.final_lr)


def test_under_a_time_budget_the_rate_follows_the_time_used():
    s = schedule(max_iters=None, max_time=100.0)
    assert s.rate(10, 50.0) == pytest.approx(0.55)
    assert s.rate(10, 100.0) == pytest.approx(s.final_lr)


def test_patience_ends_the_run_after_that_many_evaluations_without_a_new_best():
    s = schedule(patience=2)
    assert s.evaluated(10, 2.0) and s.end_reason(10, 0.0) == ""
    assert not s.evaluated(20, 2.1) and s.end_reason(20, 0.0) == ""
    assert s.evaluated(30, 1.9)  # a new best starts the count again
    assert not s.evaluated(40, 2.0) and not s.evaluated(50, 2.0)
    assert s.end_reason(50, 0.0) == "patience" and s.best_step == 30


def test_a_time_budget_stops_an_overfitting_run_by_default():
    s = schedule(max_iters=None, max_time=60.0)
    s.evaluated(10, 1.0)
    for step in range(20, 70, 10):
        s.evaluated(step, 1.5)
    assert s.end_reason(60, 30.0) == "patience"


def test_a_cooldown_decays_from_the_latest_rate_to_the_floor_in_a_straight_line_then_ends():
    s = schedule(patience=1, cooldown=0.5, max_iters=1000)
    s.next_rate(40, 0.0)
    s.evaluated(40, 1.0)
    assert not s.evaluated(60, 1.2) and s.cooldown_due()
    start = s.last_lr
    c = s.start_cooldown(60)
    assert c == {"start": 60, "steps": 30, "lr": start, "elapsed": 0.0}
    assert s.rate(74, 0.0) == pytest.approx(start + (s.final_lr - start) * 15 / 30)
    assert s.rate(89, 0.0) == pytest.approx(s.final_lr)
    assert s.end_reason(89, 0.0) == "" and s.end_reason(90, 0.0) == "cooldown"


def test_a_checkpoint_keeps_what_the_schedule_needs_to_go_on():
    s = schedule(patience=3, cooldown=0.25)
    s.evaluated(10, 2.0)
    s.evaluated(20, 2.5)
    s.start_cooldown(20)
    again = schedule(patience=3, cooldown=0.25)
    again.restore(s.state())
    assert again.state() == s.state() and again.rate(25, 0.0) == s.rate(25, 0.0)
    assert schedule().state()["best_val_loss"] is None and math.isinf(schedule().best_val)
