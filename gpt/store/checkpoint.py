"""The checkpoint format: the one place that writes, reads and verifies checkpoints.

A checkpoint holds only tensors and plain Python values and is loaded with
`torch.load(weights_only=True)`: nothing in it is unpickled as an arbitrary object. Writes
are atomic (`plumbing.atomic`), so a crash at any moment (a `kill -9` mid-save included)
leaves the previous checkpoint loadable. `training_state` lists every key gpt-train
writes; the readers (resume, sampling, evaluation, export, --init-from) take them from
the same names.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from plumbing.atomic import atomic_write_bytes
from plumbing.errors import UserError, check_version, first_line

from . import sharded
from .layout import BEST, SHARDS_FOLDER

CKPT_FORMAT = "gpt-checkpoint"
CKPT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, too new or does not fit the data/options."""


def training_state(*, model_config: dict, train_config: dict, model: dict, trained_model: dict | None,
                   average_updates: int | None, lineage: dict, optimizers: dict, scaler: dict | None, step: int,
                   tokens: int, elapsed: float, val_loss: float | None, best_val_loss: float | None,
                   best_step: int | None, stale_evals: int, cooldown: dict | None, rank_states: list,
                   world_size: int, tokenizer: str, data_fingerprint: str) -> dict:
    """A training checkpoint's contents. `model` is what sampling uses: the weights' average
    where the run keeps one, with the optimizer's own weights beside it as `trained_model`
    (and the average's update count); a LoRA run's are its adapters only. `lineage` holds
    `init_from` (the base's path, step and SHA-256) for a fine-tuning run and `lora` (rank,
    alpha, targets, base) for a LoRA run; `optimizers` its optimizers' states by name;
    `rank_states` each rank's random generators and batch sampler, so a resume is exact."""
    average = {"trained_model": trained_model, "average_updates": average_updates} if trained_model is not None else {}
    return {
        "model_config": model_config, "train_config": train_config, "model": model, **average, **lineage, **optimizers,
        "scaler": scaler, "step": step, "tokens": tokens, "elapsed": elapsed, "val_loss": val_loss,
        "best_val_loss": best_val_loss, "best_step": best_step, "stale_evals": stale_evals, "cooldown": cooldown,
        "rank_states": rank_states, "world_size": world_size, "tokenizer": tokenizer,
        "data_fingerprint": data_fingerprint,
    }


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


def load_checkpoint(path: str | Path, map_location="cpu", shards: str = "weights") -> dict:
    """The checkpoint at `path`. A sharded one's (gpt-train --fsdp) tensors are read whole into
    the places a single file keeps them, as `shards` asks: "weights" ("model" and, beside an
    average, "trained_model"), "all" (the optimizer's state too: a resume in one process or
    under DDP), or "none" (the pointer as it is: a --fsdp resume reads its own part)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged or foreign
        raise CheckpointError(f"{path} is corrupt or truncated, or not a checkpoint at all "
                              "(it is not a complete torch archive)")
    damaged = first_damaged_record(path)
    if damaged:
        raise CheckpointError(f"{path} is damaged: its record {damaged} does not match its checksum "
                              "(the file's bytes changed after it was written)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message ends by advising weights_only=False, which would run whatever
        # code the file carries: the one thing never to do with a file that needs it
        raise CheckpointError(f"{path} is refused: it holds Python objects other than tensors and plain values, and "
                              "loading those could run code from the file "
                              "(gpt-train never writes such a checkpoint)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({first_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by gpt-train")
    check_version(state.get("version"), CKPT_VERSION, f"checkpoint {path}", CheckpointError)
    if state.get("sharded") and shards != "none":
        read_shards(path, state, optimizer=shards == "all")
    return state


def read_shards(path: Path, state: dict, optimizer: bool) -> None:
    record = state["sharded"]
    prefixes = ("model/", "trained_model/") + (("optim/",) if optimizer else ())
    try:
        tensors = sharded.read_tensors(path, record, prefixes)
    except sharded.ShardError as e:
        raise CheckpointError(str(e)) from None
    state["model"] = sharded.split(tensors, "model")
    if state.get("average_updates") is not None:
        state["trained_model"] = sharded.split(tensors, "trained_model")
    if optimizer:
        state["optimizer"] = sharded.by_index(sharded.nested_optimizer(tensors), record["param_groups"])


def remove_stale_shards(run_dir: Path) -> None:
    """The shard folders no checkpoint in the run folder points to: a --fsdp run's older
    saves, those a run resumed without --fsdp left, and what a killed save was writing."""
    if (run_dir / SHARDS_FOLDER).is_dir():
        sharded.remove_unreferenced(run_dir, sharded.referenced(run_dir, shard_record))


def shard_record(path: Path) -> dict | None:
    """What a checkpoint at `path` records of its shards: None for one in a single file, or
    a file that is no checkpoint. Its tensors are mapped, not read: this costs a sharded
    pointer's few kilobytes, whatever the size of a checkpoint in one file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return state.get("sharded") if isinstance(state, dict) and state.get("format") == CKPT_FORMAT else None


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


def all_finite(weights: dict) -> bool:
    """Whether every floating-point tensor of `weights` holds finite numbers only. torch.load
    does not verify stored checksums: damaged bytes inside a well-formed file load silently,
    and non-finite weights are their visible sign (or a diverged run's)."""
    return all(bool(t.isfinite().all()) for t in weights.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())
