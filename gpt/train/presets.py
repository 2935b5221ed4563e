"""Named sets of defaults for `gpt-train --preset NAME`, and how options are layered:
TrainConfig's defaults, then a preset, then the options given explicitly."""
from __future__ import annotations

from dataclasses import asdict

import torch

from ..config import ConfigError, ModelConfig, TrainConfig, layered

PRESETS: dict[str, dict] = {
    # The well-known "baby GPT" Shakespeare configuration, for GPUs: about 10.7M parameters,
    # a few minutes on one modern GPU. It overfits its 1 MB corpus after about 1,250 of its
    # 5,000 steps, where a CPU run on a 150 KB corpus kept a best 4.9% lower with the weights'
    # average (docs/benchmarks.md, "Weight averaging"; not yet measured on a GPU)
    "baby-gpt": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
                     lr=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=5000, eval_interval=250, beta2=0.99, ema=0.99),
    # The best model found for a few minutes of a 2-core CPU (a sweep of 140 s runs on Tiny
    # Shakespeare): in so little time many small steps beat fewer large ones,
    # so the model is small, the context short, the learning rate high, and no dropout.
    # Muon for the hidden matrices: 13-19% lower held-out loss than the reference's CPU
    # configuration in its own wall time on four corpora in fp32 (17-23% in bf16, where the
    # CPU has it natively), against 6-11% with AdamW alone (docs/benchmarks.md, "Quality against nanoGPT"). The weights'
    # moving average is the model: 0.4-0.6% lower val loss at the end of 2,000 steps, 2-6%
    # in mid-run, on four corpora (docs/benchmarks.md, "Weight averaging")
    "cpu-small": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=24, dropout=0.0,
                      lr=5e-3, min_lr=5e-4, warmup_iters=50, max_iters=None, max_time=600, eval_interval=250,
                      eval_windows=256, beta2=0.99, optimizer="muon", ema=0.99),
    # The small reference configuration used by the throughput benchmark.
    "bench": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0,
                  lr=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000, eval_interval=250, beta2=0.99),
    # The bigram baseline: one table, trains in seconds.
    "bigram": dict(model="bigram", block_size=32, batch_size=64, dropout=0.0, lr=1e-2, min_lr=1e-3,
                   warmup_iters=0, max_iters=3000, eval_interval=500, weight_decay=0.0),
}


PRESET_USES = {"cpu-small": "the CPU default", "baby-gpt": "the GPU default", "bench": "the throughput benchmark",
               "bigram": "the baseline"}


def describe(name: str) -> str:
    """A preset in one line for --help, read from its values so the two cannot drift apart."""
    v = {**asdict(TrainConfig()), **PRESETS[name]}
    shape = ("bigram table" if v["model"] == "bigram"
             else f"{v['n_layer']} layers, {v['n_head']} heads, {v['n_embd']} channels")
    parts = [shape, f"context {v['block_size']}", f"batch {v['batch_size']}"]
    if v["dropout"] and v["model"] != "bigram":
        parts.append(f"dropout {v['dropout']}")
    min_lr = v["min_lr"] if v["min_lr"] is not None else v["lr"] / 10
    parts.append(f"lr {short(v['lr'])} -> {short(min_lr)}")
    if v["optimizer"] == "muon":
        parts.append("Muon")
    if v["ema"]:
        parts.append(f"EMA {v['ema']}")
    if not v["weight_decay"]:
        parts.append("no weight decay")
    parts.append(f"{v['max_iters']} steps" if v["max_iters"] else f"{v['max_time'] / 60:g} min budget")
    return f"{', '.join(parts)} ({PRESET_USES[name]})"


def short(x: float) -> str:
    """A learning rate as people write it: 5e-3 and 1.5e-3, not 0.005 and 0.0015."""
    if x >= 0.1 or x == 0:
        return f"{x:g}"
    mantissa, exponent = f"{x:.3e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


# Fine-tuning starts from a trained model: a lower learning rate and a short warmup keep
# what it knows; adapters (LoRA) start at zero and take a higher rate, without weight decay.
# fine-tuning keeps to AdamW: Muon's rate is set for training from scratch, and it cannot train adapters
FINETUNE = dict(lr=3e-4, min_lr=3e-5, warmup_iters=20, eval_interval=100, optimizer="adamw")
FINETUNE_LORA = dict(lr=2e-3, min_lr=2e-4, warmup_iters=20, eval_interval=100, weight_decay=0.0, optimizer="adamw")
# A model gpt-prune cut has lost much of what it knew: it heals at the preset's own rates and
# optimizer. Healing a cpu-small model with half its heads and MLP channels cut for 45 s on
# Tiny Shakespeare reached val 1.603 this way, 1.606 with AdamW at 2e-3, and 1.674 at the
# fine-tuning rate of 3e-4 (its teacher: 1.564).
HEAL = dict(warmup_iters=20, eval_interval=100)
SHAPE_FROM_MODEL = {"model": "kind", "n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd",
                    "block_size": "block_size", "pos": "pos", "bias": "bias", "dropout": "dropout",
                    "activation": "activation", "qk_norm": "qk_norm", "tie_weights": "tie_weights",
                    "logit_softcap": "logit_softcap", "head_dim": "head_dim", "mlp_width": "mlp_width"}


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
    values = layered({**PRESETS[preset], "preset": preset}, overrides)
    if values.get("optimizer") == "muon" and overrides.get("optimizer") is None and not muon_fits(values):
        values["optimizer"] = "adamw"  # a preset's choice, not the user's: where Muon cannot run, AdamW does
    return TrainConfig.from_dict(values)


def muon_fits(values: dict) -> bool:
    """Whether a preset's Muon can train this run: torch has it, there are weight matrices,
    and they are whole (not adapters, not split by --fsdp)."""
    return (hasattr(torch.optim, "Muon") and values.get("model", "gpt") != "bigram" and not values.get("lora")
            and not values.get("fsdp"))


def finetune_config(preset: str, base_model: dict, overrides: dict, pruned: bool = False) -> TrainConfig:
    """Defaults, the preset, the fine-tuning defaults (the healing ones for a `pruned` base),
    the base model's shape, then explicit options; an explicit option may not change the
    shape (dropout and a shorter context may)."""
    # what a base saved before an option existed was built with
    base_model = ModelConfig.from_dict(base_model).to_dict()
    shape = {option: base_model[field] for option, field in SHAPE_FROM_MODEL.items()}
    fixed = [k for k in shape
             if k not in ("dropout", "block_size") and overrides.get(k) is not None and overrides[k] != shape[k]]
    if fixed:
        raise ConfigError(f"options {', '.join('--' + k.replace('_', '-') for k in fixed)} do not match the base model "
                          f"({', '.join(f'{k}={shape[k]}' for k in fixed)}); the shape comes from --init-from")
    made_for = PRESETS.get(preset, {}).get("model", shape["model"])
    if made_for != shape["model"]:  # the bigram preset's settings are for a table, not for the base's layers
        raise ConfigError(f"--preset {preset} is for a {made_for} model and the base is a {shape['model']}; "
                          "leave --preset out (fine-tuning has its own defaults) or choose a preset of its kind")
    if overrides.get("block_size") is not None and overrides["block_size"] > shape["block_size"]:
        raise ConfigError(f"--block-size {overrides['block_size']} is longer than the base model's context "
                          f"({shape['block_size']})")
    tuning = FINETUNE_LORA if overrides.get("lora") else HEAL if pruned else FINETUNE
    if overrides.get("lr") is not None and overrides.get("min_lr") is None:
        tuning = {k: v for k, v in tuning.items() if k != "min_lr"}  # the floor follows the --lr given
    return layered_config(preset, {**tuning, **shape, **{k: v for k, v in overrides.items() if v is not None}})
