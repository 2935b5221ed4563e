"""Checkpoints: the one place that writes and reads them (training and sampling share it).

A run folder holds `latest.pt`, `best.pt` (lowest validation loss), `config.json`,
`tokenizer.json`, `metrics.jsonl` and `progress.png`. A checkpoint holds only tensors and plain Python
values and is loaded with `torch.load(weights_only=True)`: nothing in it is unpickled as
an arbitrary object. Writes are atomic: a temporary file in the same folder is written,
flushed and fsynced, then renamed over the old file, so a crash at any moment (a
`kill -9` mid-save included) leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock: no run locks there (as in train/run_folder.py)
    fcntl = None

import torch

from data_prep import DataError, Tokenizer, tokenizer_from_json
from data_prep.discovery import is_prepared_data
from plumbing.atomic import atomic_write_bytes, atomic_write_text
from plumbing.errors import UserError, check_version, first_line

from .config import ConfigError, ModelConfig
from .model import build_model

CKPT_FORMAT = "gpt-checkpoint"
CKPT_VERSION = 1
LATEST, BEST = "latest.pt", "best.pt"
EXPORT_FOLDER = "safetensors"  # where gpt-export writes a run's model unless told otherwise
PREVIOUS_RUN = ".previous-run"  # an --overwrite run's predecessor, set aside until the new run has a checkpoint
LOCK_FILE = ".lock"  # held (flock) by the gpt-train run writing the folder, which writes its process id there
DEFAULT_ROOT = Path("checkpoints")


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, too new or does not fit the data/options."""


def plain_state_dict(model: torch.nn.Module) -> dict:
    """Weights by their plain names (`plain_name`)."""
    return {plain_name(k): v for k, v in model.state_dict().items()}


def plain_name(key: str) -> str:
    """A weight's name without the `_orig_mod.` (torch.compile) and `module.` (DDP) prefixes."""
    return key.replace("_orig_mod.", "").replace("module.", "")


def torch_save(state: dict, f) -> None:
    """torch.save, whose zip writer turns a failed write (a full disk) into a RuntimeError
    of its own: the OSError behind it is what the caller can report."""
    try:
        torch.save(state, f)
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def save_checkpoint(path: Path, state: dict, best: bool = False) -> None:
    """Write `state` to `path` atomically; with `best`, the same file also becomes the run
    folder's best checkpoint (a hard link, renamed into place, so no second copy is written
    and a crash leaves either the old or the new best.pt)."""
    state = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **state}
    atomic_write_bytes(path, lambda f: torch_save(state, f))
    if best:
        tmp = path.with_name(f".{BEST}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)
        os.replace(tmp, path.with_name(BEST))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged or foreign
        raise CheckpointError(f"{path} is corrupt or truncated, or not a checkpoint at all (it is not a complete torch archive)")
    damaged = first_damaged_record(path)
    if damaged:
        raise CheckpointError(f"{path} is damaged: its record {damaged} does not match its checksum (the file's bytes changed after it was written)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds arbitrary Python objects and is refused (only weights-only checkpoints load): {first_line(e)}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by gpt-train")
    check_version(state.get("version"), CKPT_VERSION, f"checkpoint {path}", CheckpointError)
    return state


def first_damaged_record(path: Path) -> str | None:
    """The first record of a checkpoint whose bytes fail their CRC-32, or None. torch.load
    does not check them, so damaged weights would load silently, and on a GPU the first
    sign would be a device-side assert in sampling; reading the file once here costs
    milliseconds per 10 MB."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({first_line(e)})") from None


def newest_run(root: Path = DEFAULT_ROOT, option: str = "--ckpt") -> Path:
    """The run folder under `root` whose latest checkpoint is newest; `option` is the
    command's option for naming one instead (said when there is none)."""
    runs = [p.parent for p in root.glob(f"*/{LATEST}")] if root.is_dir() else []
    if not runs:
        raise CheckpointError(f"no runs with a checkpoint under {root}/ (train one with gpt-train, or name a run folder with {option})")
    return max(runs, key=lambda p: ((p / LATEST).stat().st_mtime, p.name))


def resolve_checkpoint(path: str | Path | None, prefer: str = BEST, option: str = "--ckpt") -> Path:
    """A checkpoint file from a file path, a run folder (its best, else latest checkpoint)
    or nothing (the newest run under ./checkpoints; `option`: as for `newest_run`)."""
    p = newest_run(option=option) if path is None else Path(path)
    if p.is_dir():
        for name in (prefer, LATEST, BEST):
            if (p / name).is_file():
                return p / name
        if is_prepared_data(p):
            raise CheckpointError(f"{p} is a data folder written by gpt-prepare, not a run folder; name a run folder or a checkpoint "
                                  "(gpt-train writes them under checkpoints/)")
        running = training_process(p)
        if running is not None:
            raise CheckpointError(f"run folder {p} has no checkpoint yet: a gpt-train run (process {running}) is training there "
                                  "and saves one at its first evaluation")
        if (p / PREVIOUS_RUN).is_dir():
            raise CheckpointError(f"run folder {p} has no checkpoint ({BEST} or {LATEST}): an --overwrite run stopped before its "
                                  f"first one; the run it replaced waits in {p / PREVIOUS_RUN} and comes back at the next gpt-train on the folder")
        raise CheckpointError(f"run folder {p} has no checkpoint ({BEST} or {LATEST})")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def training_process(folder: Path) -> str | None:
    """The process id of the gpt-train run that holds `folder`, or None where none does."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:  # a shared lock, let go at once: refused only while a run holds the folder
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        return None
    finally:
        os.close(fd)  # which also lets the shared lock go


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
    """The base checkpoint a LoRA run's adapters belong to, exactly as it was."""
    path = Path(ref["path"])
    if not path.is_file():
        raise CheckpointError(f"the base checkpoint of this LoRA run is missing: expected {path} (put it back, or export the run with gpt-export --merge where it exists)")
    if file_sha256(path) != ref["sha256"]:
        raise CheckpointError(f"the base checkpoint {path} has changed since this LoRA run was trained on it (SHA-256 {ref['sha256'][:16]}... expected)")
    return load_checkpoint(path)


def model_from_checkpoint(state: dict, device="cpu") -> tuple[torch.nn.Module, Tokenizer]:
    """The model (in eval mode, on `device`) and tokenizer a checkpoint describes. A LoRA
    run's checkpoint holds adapters only: its base is loaded and the adapters merged in."""
    if state.get("lora"):
        from . import lora

        model, tokenizer = model_from_checkpoint(load_base(state["lora"]["base"]), "cpu")
        spec = state["lora"]
        lora.apply(model, spec["rank"], spec["alpha"], tuple(spec["targets"]))
        try:
            lora.load_adapter_state(model, state["model"])
        except lora.LoRAError as e:
            raise CheckpointError(str(e)) from None
        return lora.merge(model).to(device).eval(), tokenizer
    try:
        cfg = ModelConfig.from_dict(state["model_config"])
        model = build_model(cfg)
        tokenizer = tokenizer_from_json(state["tokenizer"])  # a character vocabulary or a BPE
    except (KeyError, TypeError, ConfigError, DataError) as e:
        raise CheckpointError(f"checkpoint is missing or has a bad model description ({e})") from None
    if len(tokenizer) != cfg.vocab_size:
        raise CheckpointError(f"checkpoint's tokenizer has {len(tokenizer)} tokens but its model expects {cfg.vocab_size}")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint weights do not match its model config ({first_line(e)})") from None
    # torch.load does not verify stored checksums: damaged bytes inside a well-formed file
    # load silently, and non-finite weights are their visible sign
    if not all(bool(t.isfinite().all()) for t in state["model"].values() if t.is_floating_point()):
        raise CheckpointError("checkpoint has weights that are not finite numbers (the file is damaged, or its training diverged)")
    return model.to(device).eval(), tokenizer


def write_run_files(run_dir: Path, config: dict, tokenizer: Tokenizer) -> None:
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=1) + "\n")
    atomic_write_text(run_dir / "tokenizer.json", tokenizer.to_json())
