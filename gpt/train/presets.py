"""Named sets of defaults for `gpt-train --preset NAME`, and how options are layered:
TrainConfig's defaults, then a preset, then the options given explicitly."""
from __future__ import annotations

from ..config import ConfigError, TrainConfig

PRESETS: dict[str, dict] = {
    # The well-known "baby GPT" Shakespeare configuration, for GPUs: about 10.7M parameters,
    # a few minutes on one modern GPU.
    "baby-gpt": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
                     lr=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=5000, eval_interval=250, beta2=0.99),
    # The best model found for a few minutes of a 2-core CPU (a sweep of 140 s runs on Tiny
    # Shakespeare, in the README): in so little time many small steps beat fewer large ones,
    # so the model is small, the context short, the learning rate high, and no dropout.
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=24, dropout=0.0,
                      lr=5e-3, min_lr=5e-4, warmup_iters=50, max_iters=None, max_time=600, eval_interval=250,
                      eval_windows=256, beta2=0.99),
    # The small reference configuration used by the throughput benchmark.
    "bench": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
                  lr=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000, eval_interval=250, beta2=0.99),
    # The bigram baseline: one table, trains in seconds.
    "bigram": dict(model="bigram", block_size=32, batch_size=64, dropout=0.0, lr=1e-2, min_lr=1e-3,
                   warmup_iters=0, max_iters=3000, eval_interval=500, weight_decay=0.0),
}


def default_preset(device_type: str, model: str | None = None) -> str:
    """The preset a run gets when none is named: the bigram's for a bigram, else the one
    sized for the device."""
    if model == "bigram":
        return "bigram"
    return "baby-gpt" if device_type == "cuda" else "cpu-small"


def layered_config(preset: str, overrides: dict) -> TrainConfig:
    """Defaults, then the preset, then explicit options (None means not given)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    values = {**PRESETS[preset], "preset": preset}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
