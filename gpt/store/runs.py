"""Finding runs and their checkpoints: the newest run, a run folder's best or latest
checkpoint, whether a folder holds a run, which process is training in it, and the LoRA
runs built on it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock: no run locks there (as in run_folder.py)
    fcntl = None

import data_prep
from data_prep import DataError, PreparedData
from data_prep.prepared.data_folder import is_prepared_data
from plumbing.atomic import atomic_write_text
from plumbing.output_folder import first_inside

from .checkpoint import CheckpointError
from .export_folder import is_export
from .layout import BEST, CONFIG_FILE, DEFAULT_ROOT, LATEST, LOCK_FILE, PREVIOUS_RUN, TOKENIZER_FILE


def newest_run(root: Path = DEFAULT_ROOT, option: str = "--ckpt") -> Path:
    """The run folder under `root` whose latest checkpoint is newest; `option` is the
    command's option for naming one instead (said when there is none)."""
    runs = [p.parent for p in root.glob(f"*/{LATEST}")] if root.is_dir() else []
    if not runs:
        raise CheckpointError(f"no runs with a checkpoint under {root}/ "
                              f"(train one with gpt-train, or name a run folder with {option})")
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
            raise CheckpointError(f"{p} is a data folder written by gpt-prepare, not a run folder; "
                                  "name a run folder or a checkpoint (gpt-train writes them under checkpoints/)")
        if is_export(p):
            raise CheckpointError(f"{p} is an exported model (written by gpt-export), not a run folder: "
                                  "gpt-sample, gpt-eval and gpt-serve read it as it is; here, name the run folder "
                                  "it was exported from")
        running = training_process(p)
        if running is not None:
            raise CheckpointError(f"run folder {p} has no checkpoint yet: "
                                  f"a gpt-train run (process {running}) is training there "
                                  "and saves one at its first evaluation")
        if (p / PREVIOUS_RUN).is_dir():
            raise CheckpointError(f"run folder {p} has no checkpoint ({BEST} or {LATEST}): "
                                  f"an --overwrite run stopped before its first one; "
                                  f"the run it replaced waits in {p / PREVIOUS_RUN} and comes back at the next "
                                  "gpt-train on the folder")
        stopped = (": its run stopped before saving one; start it over with gpt-train --overwrite --out "
                   f"{p}") if holds_run(p) else ""
        raise CheckpointError(f"run folder {p} has no checkpoint ({BEST} or {LATEST}){stopped}")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def load_data(path: str | Path) -> PreparedData:
    """A prepared data folder (`data_prep.load`); a run folder or an exported model given
    where one is needed is named as such, with the data folder the run trained on."""
    p = Path(path)
    if p.is_dir() and not is_prepared_data(p):
        if holds_run(p):
            trained_on = run_config(p).get("train", {}).get("data")
            hint = f" (this run trained on {trained_on})" if isinstance(trained_on, str) else ""
            raise DataError(f"{p} is a run folder written by gpt-train, not a data folder; give --data the folder "
                            f"gpt-prepare wrote{hint}")
        if is_export(p):
            raise DataError(f"{p} is an exported model written by gpt-export, not a data folder; give --data the "
                            "folder gpt-prepare wrote")
    return data_prep.load(p)


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


def holds_run(path: Path) -> bool:
    """Whether `path` holds a run: a checkpoint, or the config.json a run writes first."""
    return has_checkpoint(path) or {"model", "train"} <= run_config(path).keys()


def has_checkpoint(path: Path) -> bool:
    return (path / LATEST).exists() or (path / BEST).exists()


def run_config(path: Path) -> dict:
    """A run folder's config.json, or {} where it has none that reads as one."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) and isinstance(config.get("train", {}), dict) else {}


def lora_runs_on(path: Path) -> list[Path]:
    """The LoRA runs beside `path` (in the same parent folder) whose base checkpoint is in
    it, or in a folder inside it (an export): a LoRA checkpoint holds only its adapters, and
    loads only on that exact base."""
    found = []
    for config_file in sorted(path.parent.glob(f"*/{CONFIG_FILE}")):
        if config_file.parent == path:
            continue
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
            base = Path(config["lora"]["base"]["path"])
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if first_inside(path, [base]):
            found.append(config_file.parent)
    return found


def default_run_dir(model: str) -> Path:
    """A new run's folder: the model's kind, the date and time, and the process id, so two
    runs started in the same second do not collide."""
    return DEFAULT_ROOT / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def write_run_files(run_dir: Path, config: dict, tokenizer_json: str) -> None:
    """The files a run writes before its first step: its options and its vocabulary."""
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=1) + "\n")
    atomic_write_text(run_dir / TOKENIZER_FILE, tokenizer_json)
