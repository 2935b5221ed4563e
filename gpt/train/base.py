"""The model a fine-tuning run starts from: a checkpoint or a Hugging Face folder, and a
reference to it (path, step and SHA-256 of the file holding the weights) that the run
records so its origin is never in doubt."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..store import load
from ..store.checkpoint import all_finite, load_checkpoint
from ..store.export_folder import is_export, read_export_state
from ..store.hf_folder import WEIGHTS, is_hf_folder
from ..store.hf_read import read_hf_folder
from ..store.runs import resolve_checkpoint
from .errors import TrainError

# what a run takes from its base's checkpoint; the rest (the base's optimizer moments, twice
# the weights' size) is let go at once rather than held for the whole run. "pruned": what
# gpt-prune cut, where it did (such a base heals at the preset's rates: presets.HEAL)
REQUIRED = ("model", "model_config", "tokenizer")
KEPT = (*REQUIRED, "pruned")


@dataclass
class Base:
    state: dict
    ref: dict

    def __post_init__(self) -> None:
        self.state = {k: v for k, v in self.state.items() if k in KEPT}

    def release_weights(self) -> None:
        """Once they are in the run's model, the base's copy of the weights is not needed."""
        self.state.pop("model", None)

    @classmethod
    def from_run(cls, path: str | Path) -> "Base":
        """A run folder (its best checkpoint), a checkpoint file, a gpt-export folder (a LoRA
        run merged, say) or a Hugging Face folder (gpt-export --format hf's, or a GPT-2 or
        GPT-NeoX model saved by transformers)."""
        if is_hf_folder(path) or is_export(path):
            # checked whole, its weights finite: refused in one line otherwise
            state = read_hf_folder(path) if is_hf_folder(path) else read_export_state(path)
            return cls(state, load.base_reference(Path(path) / WEIGHTS, state))
        ckpt = resolve_checkpoint(path)
        state = load_checkpoint(ckpt)
        if state.get("lora"):
            raise TrainError(f"--init-from {path} is a LoRA run (adapters on {state['lora']['base']['path']}); "
                             f"fine-tune from that base, or continue the LoRA run with --resume")
        for key in REQUIRED:
            if key not in state:
                raise TrainError(f"--init-from {path}: the checkpoint has no {key.replace('_', ' ')}")
        if not all_finite(state["model"]):
            raise TrainError(f"--init-from {ckpt}: the checkpoint's weights are not finite numbers "
                             "(the file is damaged, or its training diverged); start from an earlier checkpoint")
        return cls(state, load.base_reference(ckpt, state))

    @classmethod
    def from_reference(cls, ref: dict) -> "Base":
        """The base a LoRA run recorded, checked to be exactly the file it was trained on."""
        return cls(load.load_base(ref), ref)
