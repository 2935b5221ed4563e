"""The export format: a model as a folder any safetensors reader can load.

    EXPORT/model.safetensors   the weights, fp32, by their names in the model (no pickle)
    EXPORT/config.json         format and version, the model's shape, every tensor's shape,
                               which tensors are tied, where the export came from
    EXPORT/tokenizer.json      the vocabulary, as gpt-prepare wrote it

A head tied to the token embedding is stored once, as `wte.weight`: safetensors holds no
shared tensors, and config.json's `tied` says which name stands for which. docs/formats.md
lists every tensor with its shape and the computation that uses it, for readers without
this package. Loading checks the tensors against the model that config.json describes, so
a folder whose parts disagree is refused, never half-loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from data_prep import DataError, Tokenizer, tokenizer_from_json
from plumbing.errors import UserError, check_version, first_line

from ..config import ConfigError, ModelConfig
from ..model import build_model
from .checkpoint import all_finite, plain_state_dict
from .layout import CONFIG_FILE, TOKENIZER_FILE

EXPORT_FORMAT = "chargpt-safetensors"
EXPORT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", CONFIG_FILE, TOKENIZER_FILE


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


def write_export(folder: Path, model: torch.nn.Module, tokenizer: Tokenizer, source: dict) -> None:
    """The three files of an export, written into `folder` (a fresh folder of the caller's,
    moved into place whole once complete: plain writes suffice here)."""
    st = safetensors_module()
    tensors, tied = stored_tensors(model)
    config = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "model": model.config.to_dict(),
        "weights": WEIGHTS, "tokenizer": TOKENIZER, "dtype": "float32",
        "tied": tied,
        "tensors": {k: list(v.shape) for k, v in tensors.items()},
        "source": source,
    }
    blob = st.save(tensors, metadata={"format": EXPORT_FORMAT, "version": str(EXPORT_VERSION)})
    (folder / WEIGHTS).write_bytes(blob)
    (folder / CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    (folder / TOKENIZER).write_text(tokenizer.to_json(), encoding="utf-8")


def is_export(path: str | Path) -> bool:
    """Whether `path` is a folder written by gpt-export (it holds the weights file; a run
    folder never does)."""
    return Path(path).is_dir() and (Path(path) / WEIGHTS).is_file()


def written_by_export(path: str | Path) -> bool:
    """Whether `path` is an export folder by its config.json too (what --force may replace)."""
    try:
        return is_export(path) and bool(read_export_config(path))
    except ExportError:
        return False


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
        raise ExportError(f"export {folder}: its tokenizer has {len(tokenizer)} tokens "
                          f"but its config says vocab_size {cfg.vocab_size}")
    tensors = read_tensors(folder / WEIGHTS)
    expected, tied = stored_tensors(model)
    check_tensors(folder, {k: tuple(v.shape) for k, v in expected.items()}, tensors)
    if not all_finite(tensors):
        raise ExportError(f"export {folder} has weights that are not finite numbers ({WEIGHTS} is damaged)")
    model.load_state_dict({**tensors, **{name: tensors[src] for name, src in tied.items()}})
    return model.to(device).eval(), tokenizer


def read_export_state(folder: str | Path) -> dict:
    """An export folder as the state a checkpoint holds (as `hf_read.read_hf_folder` gives a
    Hugging Face folder's): what fine-tuning from it, or a LoRA run on it, starts from."""
    model, tokenizer = load_export(folder)
    source = read_export_config(folder).get("source") or {}
    return {"model_config": model.config.to_dict(), "model": plain_state_dict(model), "tokenizer": tokenizer.to_json(),
            "step": source.get("step"), "val_loss": source.get("val_loss"), "source": source}


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
    wrong = [f"{k} is {tuple(found[k].shape)}, not {expected[k]}" for k in expected
             if k in found and tuple(found[k].shape) != expected[k]]
    wrong += [f"{k} is {v.dtype}" for k, v in found.items() if k in expected and v.dtype != torch.float32]
    if missing or extra or wrong:
        parts = (([f"missing {', '.join(missing[:3])}"] if missing else [])
                 + ([f"unexpected {', '.join(extra[:3])}"] if extra else []))
        raise ExportError(f"export {folder}: {WEIGHTS} does not match the model in {CONFIG} "
                          f"({'; '.join(parts + wrong[:3])})")
