"""Exports: a checkpoint's model as a folder any safetensors reader can load.

    EXPORT/model.safetensors   the weights, fp32, by their names in the model (no pickle)
    EXPORT/config.json         format and version, the model's shape, every tensor's shape,
                               which tensors are tied, where the export came from
    EXPORT/tokenizer.json      the vocabulary, as gpt-prepare wrote it

A head tied to the token embedding is stored once, as `wte.weight`: safetensors holds no
shared tensors, and config.json's `tied` says which name stands for which. The README's
"Small and fast" section lists every tensor with its shape and the computation that uses
it, for readers without this package. Loading checks the tensors against the model that
config.json describes, so a folder whose parts disagree is refused, never half-loaded.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from data_prep import DataError, Tokenizer, tokenizer_from_json
from plumbing.errors import UserError, check_version, first_line
from plumbing.output_folder import (check_output, check_replaceable, claim, clean_after_killed_runs, first_inside, move_into_place,
                                    parents_removed_on_failure)

from .checkpoint import load_checkpoint, model_from_checkpoint, plain_state_dict, resolve_checkpoint
from .config import ConfigError, ModelConfig
from .model import build_model

EXPORT_FORMAT = "chargpt-safetensors"
EXPORT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
EXPORT_FORMATS = ("safetensors",)


class ExportError(UserError):
    """An export that cannot be written, or an export folder that cannot be loaded."""


def safetensors_module():
    """safetensors.torch, imported on use: only exports need it."""
    try:
        import safetensors.torch
    except ImportError:
        raise ExportError("exports need the safetensors package (pip install safetensors)") from None
    return safetensors.torch


def stored_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors an export stores, by name, and the tied names left out ({left out: stored})."""
    state = plain_state_dict(model)
    cfg = model.config
    tied = {"head.weight": "wte.weight"} if cfg.kind == "gpt" and cfg.tie_weights else {}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items() if k not in tied}
    return tensors, tied


def export_safetensors(ckpt: str | Path | None, out: str | Path, force: bool = False, merge: bool = False) -> Path:
    """Write the model of checkpoint `ckpt` (a file, a run folder or None: the newest run)
    into the folder `out`. An existing `out` is replaced only with `force`, and only once the
    new export is complete: it is written into a hidden folder beside it and renamed. A LoRA
    run is exported only with `merge`: its adapters folded into its base's weights, a model as
    large as the base that needs neither the base nor the adapters again."""
    out = Path(os.path.abspath(out))  # the new folder is written beside it: ".." has no name to write beside
    check_replaceable(out)
    clean_after_killed_runs(out)
    check_output(out, force, ExportError)
    path = resolve_checkpoint(ckpt)
    if first_inside(out, [path]) is not None:
        raise ExportError(f"--out {out} holds the checkpoint {path}, which replacing it would delete; "
                          "name a folder of its own for the export (the default is RUN/safetensors)")
    state = load_checkpoint(path)
    lora = state.get("lora")
    if lora and not merge:
        raise ExportError(f"{path} holds LoRA adapters on {lora['base']['path']}; its export is the merged model "
                          f"(full size, needing neither the base nor the adapters): give --merge")
    model, tokenizer = model_from_checkpoint(state)
    st = safetensors_module()
    tensors, tied = stored_tensors(model)
    config = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "model": model.config.to_dict(),
        "weights": WEIGHTS, "tokenizer": TOKENIZER, "dtype": "float32",
        "tied": tied,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "source": {"checkpoint": str(path), "step": state.get("step"), "val_loss": state.get("val_loss")},
    }
    if lora:  # what was merged: the adapters' shape and the exact base they were trained on
        config["source"]["merged_lora"] = {k: lora[k] for k in ("rank", "alpha", "targets", "base")}
    with parents_removed_on_failure(out):
        tmp = claim(out)
        try:
            blob = st.save(tensors, metadata={"format": EXPORT_FORMAT, "version": str(EXPORT_VERSION)})
            # plain writes: nothing reads the partial folder, and move_into_place syncs it whole
            (tmp / WEIGHTS).write_bytes(blob)
            (tmp / CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
            (tmp / TOKENIZER).write_text(tokenizer.to_json(), encoding="utf-8")
            check_output(out, force, ExportError)  # a folder made there meanwhile is the user's, as one at the start
            move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def load_any_model(path: str | Path | None, device="cpu") -> tuple[torch.nn.Module, Tokenizer, Path, dict]:
    """The model (in eval mode, on `device`) and tokenizer at `path`: a folder written by
    gpt-export, a checkpoint file, a run folder (its best checkpoint) or None (the newest
    run). Also the file the weights came from, and what it records of its run: a
    checkpoint's whole state, an export's `source` (step and val loss; no tokens or time)."""
    if path is not None and is_export(path):
        model, tokenizer = load_export(path, device)
        return model, tokenizer, Path(path) / WEIGHTS, read_export_config(path).get("source", {})
    ckpt = resolve_checkpoint(path)
    record = load_checkpoint(ckpt)
    if not record.get("tokenizer"):
        raise ExportError(f"{ckpt} has no tokenizer, so no text can be encoded for its model (was it written by gpt-train?)")
    return (*model_from_checkpoint(record, device), ckpt, record)


def is_export(path: str | Path) -> bool:
    """Whether `path` is a folder written by gpt-export (it holds the weights file; a run
    folder never does)."""
    return Path(path).is_dir() and (Path(path) / WEIGHTS).is_file()


def read_export_config(folder: str | Path) -> dict:
    """An export folder's config.json, checked to be one gpt-export wrote, in a version this
    code reads."""
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"export {folder} has no {CONFIG}") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"export {folder}: {CONFIG} is not readable JSON ({first_line(e)})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{folder} is not a folder written by gpt-export ({CONFIG} does not say {EXPORT_FORMAT!r})")
    check_version(config.get("version"), EXPORT_VERSION, f"export {folder}", ExportError)
    return config


def load_export(folder: str | Path, device="cpu") -> tuple[torch.nn.Module, Tokenizer]:
    """The model (in eval mode, on `device`) and tokenizer of an export folder."""
    folder = Path(folder)
    config = read_export_config(folder)
    try:
        cfg = ModelConfig.from_dict(config["model"])
        model = build_model(cfg)
        tokenizer = tokenizer_from_json((folder / TOKENIZER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"export {folder} has no {TOKENIZER}") from None
    except (KeyError, TypeError, ValueError, ConfigError, DataError, OSError) as e:
        raise ExportError(f"export {folder} has a bad model description or tokenizer ({first_line(e)})") from None
    if len(tokenizer) != cfg.vocab_size:
        raise ExportError(f"export {folder}: its tokenizer has {len(tokenizer)} tokens but its config says vocab_size {cfg.vocab_size}")
    tensors = read_tensors(folder / WEIGHTS)
    expected, tied = stored_tensors(model)
    check_tensors(folder, {k: tuple(v.shape) for k, v in expected.items()}, tensors)
    if not all(bool(t.isfinite().all()) for t in tensors.values()):
        raise ExportError(f"export {folder} has weights that are not finite numbers ({WEIGHTS} is damaged)")
    model.load_state_dict({**tensors, **{name: tensors[src] for name, src in tied.items()}})
    return model.to(device).eval(), tokenizer


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    st = safetensors_module()
    try:
        return st.load_file(path)
    except FileNotFoundError:
        raise ExportError(f"export weights not found: {path}") from None
    except Exception as e:  # safetensors' own error type, plus OSError and friends: a bad file
        raise ExportError(f"{path} is not a readable safetensors file ({first_line(e)})") from None


def check_tensors(folder: Path, expected: dict[str, tuple], found: dict[str, torch.Tensor]) -> None:
    """Refuse, in one line, weights that do not fit the model config.json describes."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    wrong = [f"{k} is {tuple(found[k].shape)}, not {expected[k]}" for k in expected if k in found and tuple(found[k].shape) != expected[k]]
    wrong += [f"{k} is {v.dtype}" for k, v in found.items() if k in expected and v.dtype != torch.float32]
    if missing or extra or wrong:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + ([f"unexpected {', '.join(extra[:3])}"] if extra else []) + wrong[:3]
        raise ExportError(f"export {folder}: {WEIGHTS} does not match the model in {CONFIG} ({'; '.join(parts)})")
