"""Loading any model: a checkpoint, a LoRA run with its base, a folder written by gpt-export,
or a Hugging Face folder (GPT-2 or GPT-NeoX, ours or saved by transformers). Sampling,
evaluation, export and serving all start here.

A LoRA run's checkpoint holds its adapters only, and names its base checkpoint by path
and SHA-256: the base is loaded, checked to be exactly that file, and the adapters merged
into its weights, so every inference path runs a plain model at full speed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from data_prep import DataError, Tokenizer, tokenizer_from_json
from plumbing.errors import first_line

from .. import lora
from ..config import ConfigError, ModelConfig
from ..model import build_model
from .checkpoint import CheckpointError, all_finite, load_checkpoint
from .export_folder import WEIGHTS, is_export, load_export, read_export_config, read_export_state
from .hf_folder import is_hf_folder
from .hf_read import read_hf_folder
from .runs import resolve_checkpoint


def load_any_model(path: str | Path | None, device="cpu") -> tuple[torch.nn.Module, Tokenizer, Path, dict]:
    """The model (in eval mode, on `device`) and tokenizer at `path`: a folder written by
    gpt-export, a Hugging Face folder, a checkpoint file, a run folder (its best checkpoint)
    or None (the newest run). Also the file the weights came from, and what it records of its
    run: a checkpoint's whole state, an export's `source` (step and val loss; no tokens or
    time; nothing for a folder transformers saved)."""
    if path is not None and is_hf_folder(path):  # before is_export: both hold a model.safetensors
        state = read_hf_folder(path)
        return (*model_from_checkpoint(state, device, Path(path)), Path(path) / WEIGHTS, state["source"])
    if path is not None and is_export(path):
        model, tokenizer = load_export(path, device)
        return model, tokenizer, Path(path) / WEIGHTS, read_export_config(path).get("source", {})
    ckpt = resolve_checkpoint(path)
    record = load_checkpoint(ckpt)
    if not record.get("tokenizer"):
        raise CheckpointError(f"{ckpt} has no tokenizer, so no text can be encoded for its model "
                          "(was it written by gpt-train?)")
    return (*model_from_checkpoint(record, device, ckpt), ckpt, record)


def model_from_checkpoint(state: dict, device="cpu", path: Path | None = None) -> tuple[torch.nn.Module, Tokenizer]:
    """The model (in eval mode, on `device`) and tokenizer a checkpoint describes; `path`,
    the file it was read from, is named in what is refused."""
    where = f"checkpoint {path}" if path is not None else "checkpoint"
    if state.get("lora"):
        return lora_model(state, device)
    try:
        cfg = ModelConfig.from_dict(state["model_config"])
        model = build_model(cfg)
        tokenizer = tokenizer_from_json(state["tokenizer"])  # a character vocabulary or a BPE
    except (KeyError, TypeError, ConfigError, DataError) as e:
        raise CheckpointError(f"{where} is missing or has a bad model description ({e})") from None
    if len(tokenizer) != cfg.vocab_size:
        raise CheckpointError(f"{where}: its tokenizer has {len(tokenizer)} tokens "
                              f"but its model expects {cfg.vocab_size}")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{where}: its weights do not match its model config ({first_line(e)})") from None
    if not all_finite(state["model"]):
        raise CheckpointError(f"{where} has weights that are not finite numbers "
                              "(the file is damaged, or its training diverged)")
    return model.to(device).eval(), tokenizer


def lora_model(state: dict, device) -> tuple[torch.nn.Module, Tokenizer]:
    """A LoRA run's model: its base with the adapters merged in."""
    spec = state["lora"]
    base_path = Path(spec["base"]["path"])
    model, tokenizer = model_from_checkpoint(load_base(spec["base"]), "cpu", base_path)
    lora.apply(model, spec["rank"], spec["alpha"], tuple(spec["targets"]))
    try:
        lora.load_adapter_state(model, state["model"])
    except lora.LoRAError as e:
        raise CheckpointError(str(e)) from None
    return lora.merge(model).to(device).eval(), tokenizer


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_reference(path: Path, state: dict) -> dict:
    """Where a fine-tuned run came from: the base checkpoint's path, step and SHA-256."""
    return {"path": str(Path(path).resolve()), "step": state.get("step"), "sha256": file_sha256(path)}


def load_base(ref: dict) -> dict:
    """The base checkpoint a LoRA run's adapters belong to, exactly as it was (or, for a base
    that is a Hugging Face or gpt-export folder, its weights file, read as a checkpoint's state)."""
    path = Path(ref["path"])
    if not path.is_file():
        raise CheckpointError(f"the base checkpoint of this LoRA run is missing: expected {path} "
                              "(put it back, or export the run with gpt-export --merge where it exists)")
    if file_sha256(path) != ref["sha256"]:
        raise CheckpointError(f"the base checkpoint {path} has changed since this LoRA run was trained on it "
                              f"(SHA-256 {ref['sha256'][:16]}... expected)")
    if path.name == WEIGHTS and is_hf_folder(path.parent):
        return read_hf_folder(path.parent)
    if path.name == WEIGHTS and is_export(path.parent):
        return read_export_state(path.parent)
    return load_checkpoint(path)
