"""gpt-prune's work: load a trained model, measure what each part of it is worth on
validation windows, cut what is worth least, and write the smaller model as a new run
folder, whole or not at all (written beside its place, then renamed into it).

The folder holds what a run folder holds for the commands that read a model (latest.pt and
best.pt, config.json, tokenizer.json), so gpt-sample, gpt-eval, gpt-export, gpt-serve and
int8 load it as any run. Its checkpoint has no optimizer state and no training options:
it is a start for `gpt-train --init-from`, which heals it, not a run to resume.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

import data_prep
from plumbing.errors import UserError
from plumbing.output_folder import Writer, checked_output, first_inside, new_folder

from ..device import resolve_device
from ..model import GPT, count_parameters
from ..store.checkpoint import load_checkpoint, save_checkpoint
from ..store.export_folder import is_export
from ..store.hf_folder import is_hf_folder
from ..store.layout import BEST, CONFIG_FILE, EXPORT_FOLDER, HF_EXPORT_FOLDER, LATEST, TOKENIZER_FILE
from ..store.load import base_reference, load_any_model, model_from_checkpoint
from ..store.runs import load_data, resolve_checkpoint, write_run_files
from ..train.batches import BlockSizeError, fixed_windows
from .importance import channel_scores, head_costs, layer_costs, mean_loss
from .shrink import Kept, how_many_removed, shrink, top

MARK = "pruned"  # the checkpoint's and config.json's record of the cut


class PruneError(UserError):
    """A model that cannot be pruned as asked, or options that make no sense."""


@dataclass(frozen=True)
class PruneOptions:
    heads: float | None = None  # the fraction of each layer's heads to remove
    mlp: float | None = None  # the fraction of each layer's MLP channels to remove
    layers: int = 0  # whole layers to remove
    data: str | None = None  # the windows' data folder; default the run's own
    windows: int = 128  # validation windows the importance is measured on
    batch_size: int = 16
    device: str = "auto"
    seed: int = 0  # which windows: not the ones training evaluated on (its seed is 1234)
    force: bool = False

    def check(self) -> None:
        for name in ("heads", "mlp"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:  # also refuses NaN
                what = "heads" if name == "heads" else "MLP channels"
                raise PruneError(f"--{name} is the fraction of each layer's {what} to remove, in (0, 1]; got {value}")
        if self.layers < 0:
            raise PruneError(f"--layers is a number of layers to remove, 0 or more; got {self.layers}")
        if self.heads is None and self.mlp is None and not self.layers:
            raise PruneError("nothing to remove: give --heads, --mlp or --layers (or several)")
        for name in ("windows", "batch_size"):
            if getattr(self, name) < 1:
                raise PruneError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


def ceil_3_digits(x: float) -> float:
    """`x` rounded up at its third significant digit: a least value shown short that is still
    enough (0.5 / 256 = 0.001953125 shows as 0.00196, where 0.00195 would fall short)."""
    unit = 10.0 ** (math.floor(math.log10(x)) - 2)
    return round(math.ceil(x / unit) * unit, 12)


# --force replaces only a folder gpt-prune wrote, and only with nothing else inside: its files,
# and gpt-export's default outputs for it, made from the model being replaced (as a gpt-train
# --overwrite run's go with it); a user's notes, or a run trained inside it, stop it
PRUNED_ENTRIES = {LATEST, BEST, CONFIG_FILE, TOKENIZER_FILE, EXPORT_FOLDER, HF_EXPORT_FOLDER}
PRUNER = Writer("gpt-prune", lambda path: MARK in read_config(path), entries=lambda path: PRUNED_ENTRIES)


def read_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


@dataclass
class Result:
    out: Path
    parameters: tuple[int, int]
    loss: tuple[float, float]  # mean loss on the measured windows, before and after
    kept: Kept
    shape: tuple[int, int, int]  # layers, heads per layer and MLP channels per layer, before
    windows: int
    data: str


def load_source(path: str, device: torch.device) -> tuple[GPT, data_prep.Tokenizer, Path, dict]:
    """The model to prune, on `device`; refused where it is a bigram or a LoRA run."""
    if is_hf_folder(path) or is_export(path):
        model, tokenizer, file, record = load_any_model(path, device)
    else:
        file = resolve_checkpoint(path, option="the RUN argument")
        record = load_checkpoint(file)
        if record.get("lora"):
            raise PruneError(f"{path} is a LoRA run: its adapters live beside a base model. Merge them first, "
                             f"gpt-export {path} --merge --out MERGED, then prune that: gpt-prune MERGED --out ...")
        model, tokenizer = model_from_checkpoint(record, device, file)
    if model.config.kind != "gpt":
        raise PruneError(f"{path} is a bigram model: a table of next-token scores, with no layers, heads or "
                         "channels to remove")
    return model, tokenizer, file, record


def measuring_batches(opts: PruneOptions, record: dict, model: GPT, tokenizer, device) -> tuple[list, str]:
    """The validation windows the importance is measured on, in batches, and their folder."""
    recorded = (record.get("train_config") or {}).get("data")
    folder = opts.data or recorded
    if not folder:
        raise PruneError("give --data: a folder prepared with this model's vocabulary, whose validation split "
                         "measures what each part of the model is worth")
    if not opts.data and not Path(folder).is_dir():
        raise PruneError(f"the data folder the model was trained on, {folder}, is not there; give --data: a folder "
                         "prepared with the model's vocabulary")
    folder = os.path.abspath(folder)  # recorded so, the folder works from any directory
    data = load_data(folder)
    if data.tokenizer.fingerprint() != tokenizer.fingerprint():
        raise PruneError(f"data folder {folder} has a different vocabulary from the model; "
                         f"give --data a folder prepared with it (gpt-prepare TEXT --vocab-from MODEL)")
    cfg = model.config
    try:
        x, y = fixed_windows(data.split("val"), cfg.block_size, opts.windows, opts.seed, cfg.vocab_size)
    except BlockSizeError:
        raise PruneError(f"the validation split of {folder} has no stretch as long as the model's context "
                         f"({cfg.block_size} tokens) plus one; prepare more text, or a larger --val-fraction") from None
    batches = [(x[i : i + opts.batch_size].to(device), y[i : i + opts.batch_size].to(device))
               for i in range(0, len(x), opts.batch_size)]
    return batches, str(folder)


def choose(model: GPT, opts: PruneOptions, batches: list) -> tuple[GPT, Kept]:
    """The smaller model and what it kept: layers first (measured on the whole model), then
    heads and channels, measured on the model without those layers."""
    cfg = model.config
    drop_heads = how_many_removed(opts.heads or 0.0, cfg.n_head)
    drop_channels = how_many_removed(opts.mlp or 0.0, cfg.mlp_hidden)
    for asked, total, what in ((opts.layers, cfg.n_layer, "layer"), (drop_heads, cfg.n_head, "head in each layer"),
                               (drop_channels, cfg.mlp_hidden, "MLP channel in each layer")):
        if asked >= total:
            raise PruneError(f"removing {asked} of {total} would leave no {what}; remove fewer")
    for fraction, removed, total, name in ((opts.heads, drop_heads, cfg.n_head, "heads"),
                                           (opts.mlp, drop_channels, cfg.mlp_hidden, "mlp")):
        if fraction is not None and removed == 0:  # rounded to none: a copy, not what was asked
            raise PruneError(f"--{name} {fraction:g} of {total} rounds to none removed; give at least "
                             f"{ceil_3_digits(0.5 / total):g}")
    all_heads, all_channels = list(range(cfg.n_head)), list(range(cfg.mlp_hidden))
    layers = list(range(cfg.n_layer))
    if opts.layers:
        costs = layer_costs(model, batches)
        dropped = set(sorted(layers, key=lambda i: (costs[i], i))[: opts.layers])
        layers = [i for i in layers if i not in dropped]
        model = shrink(model, Kept(layers, [all_heads] * len(layers), [all_channels] * len(layers)))
    heads, channels = [all_heads] * len(layers), [all_channels] * len(layers)
    if drop_heads:
        heads = [top(costs, cfg.n_head - drop_heads) for costs in head_costs(model, batches)]
    if drop_channels:
        channels = [top(scores, cfg.mlp_hidden - drop_channels) for scores in channel_scores(model, batches)]
    if drop_heads or drop_channels:
        model = shrink(model, Kept(list(range(len(layers))), heads, channels))
    return model, Kept(layers, heads, channels)


def prune(source: str, out: str | Path, opts: PruneOptions) -> Result:
    opts.check()
    out = checked_output(out, opts.force, PRUNER, PruneError)
    device = resolve_device(opts.device)
    model, tokenizer, file, record = load_source(source, device)
    if first_inside(out, [file]) is not None:
        raise PruneError(f"--out {out} holds the model being pruned ({file}); name a new folder")
    batches, data = measuring_batches(opts, record, model, tokenizer, device)
    cfg = model.config
    before = mean_loss(model, batches)
    smaller, kept = choose(model, opts, batches)
    after = mean_loss(smaller, batches)
    sizes = (count_parameters(model), count_parameters(smaller))
    report = {"from": base_reference(file, record), "heads": opts.heads, "mlp": opts.mlp, "layers": opts.layers,
              "kept_layers": kept.layers, "heads_per_layer": len(kept.heads[0]),
              "channels_per_layer": len(kept.channels[0]), "parameters": list(sizes),
              "measured": {"data": data, "windows": sum(len(x) for x, _ in batches), "seed": opts.seed,
                           "loss_before": before, "loss_after": after}}
    state = {"model_config": smaller.config.to_dict(),
             "model": {k: v.detach().cpu() for k, v in smaller.state_dict().items()},
             "tokenizer": tokenizer.to_json(), "data_fingerprint": tokenizer.fingerprint(),
             "step": record.get("step"), "val_loss": None, "train_config": {"data": data},  # gpt-eval's default data
             MARK: {**report, "kept_heads": kept.heads, "kept_channels": kept.channels}}
    with new_folder(out, opts.force, PRUNER, PruneError) as tmp:
        save_checkpoint(tmp / LATEST, state, best=True)
        write_run_files(tmp, {"model": smaller.config.to_dict(), MARK: report}, tokenizer.to_json())
    return Result(out, sizes, (before, after), kept, (cfg.n_layer, cfg.n_head, cfg.mlp_hidden),
                  report["measured"]["windows"], data)
