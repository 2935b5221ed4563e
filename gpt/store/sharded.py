"""Sharded checkpoints (gpt-train --fsdp): every process writes its own part, in parallel.

    RUN/latest.pt                 a small checkpoint: step, configs, tokenizer, RNG and sampler
                                  states, the optimizer's settings, and `sharded`: where the
                                  tensors are and the size of each of their files
    RUN/shards/step-00001000-ab12cd34/
      .metadata                   torch.distributed.checkpoint's index of every tensor
      __0_0.distcp, __1_0.distcp  each process's part of every weight and optimizer moment

The tensors are written with `torch.distributed.checkpoint` (DCP) into a hidden folder beside
their place, which rank 0 renames into place once every rank has written; only then is
latest.pt (and best.pt, a hard link) replaced, atomically, to point at it. A save killed at
any moment leaves the previous latest.pt pointing at the previous folder, whole. Folders no
longer named by latest.pt or best.pt are removed after each save.

Inside, the tensors have flat names: "model/NAME" (the weights sampling uses: the average
where the run keeps one), "trained_model/NAME" (the optimizer's weights beside an average)
and "optim/NAME/MOMENT" (AdamW's moments and step count, by parameter name). DCP reshards
them for any number of processes; a single process reads them whole (`read_tensors`), so
every command that loads a checkpoint loads a sharded one.
"""
from __future__ import annotations

import os
import shutil
import uuid
import warnings
from pathlib import Path

import torch

from plumbing.atomic import sync_folder, sync_tree
from plumbing.errors import first_line

from .layout import BEST, LATEST, SHARDS_FOLDER

METADATA = ".metadata"


class ShardError(Exception):
    """A sharded checkpoint whose files are missing, truncated or unreadable."""


def new_folder_name(step: int) -> str:
    return f"step-{step:08d}-{uuid.uuid4().hex[:8]}"


def staging(run_dir: Path, name: str) -> Path:
    return run_dir / SHARDS_FOLDER / f".tmp-{name}"


def prepare_staging(run_dir: Path, name: str) -> Path:
    """Rank 0, before the others write: an empty hidden folder for the new tensors."""
    tmp = staging(run_dir, name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_tensors(tensors: dict, folder: Path) -> None:
    """Every rank, together: each writes its part of `tensors` (flat names, DTensors or
    plain tensors) into `folder`."""
    import torch.distributed.checkpoint as dcp

    dcp.save(tensors, storage_writer=dcp.FileSystemWriter(folder, sync_files=True))


def settle(run_dir: Path, name: str) -> dict:
    """Rank 0, after every rank has written: the folder renamed into place, and the record
    the pointer keeps of it (its place, relative to the run folder, and each file's size)."""
    tmp, final = staging(run_dir, name), run_dir / SHARDS_FOLDER / name
    sync_tree(tmp)
    files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
    os.replace(tmp, final)
    sync_folder(final.parent)
    return {"folder": f"{SHARDS_FOLDER}/{name}", "files": files}


def remove_unreferenced(run_dir: Path, keep: list[str]) -> None:
    """Rank 0, after the pointer is written: the shard folders neither latest.pt nor best.pt
    names (`keep`, their records' folders), and any staging a killed save left."""
    root = run_dir / SHARDS_FOLDER
    kept = {Path(k).name for k in keep}
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.name not in kept:
            shutil.rmtree(entry, ignore_errors=True)


def referenced(run_dir: Path, read_pointer) -> list[str]:
    """The shard folders latest.pt and best.pt name (`read_pointer(path)`: its record, or None)."""
    out = []
    for name in (LATEST, BEST):
        record = read_pointer(run_dir / name) if (run_dir / name).is_file() else None
        if record:
            out.append(record["folder"])
    return out


def folder_of(pointer: Path, record: dict) -> Path:
    return pointer.parent / record["folder"]


def check_files(pointer: Path, record: dict) -> Path:
    """The shard folder `record` names, every file present at the size it was written; else
    one line naming the first file that is not."""
    folder = folder_of(pointer, record)
    if not folder.is_dir():
        raise ShardError(f"{pointer} points to the shard folder {folder}, which is missing")
    for name, size in record["files"].items():
        f = folder / name
        if not f.is_file():
            raise ShardError(f"{pointer}: its shard file {f} is missing")
        if f.stat().st_size != size:
            raise ShardError(f"{pointer}: its shard file {f} is truncated or damaged "
                             f"({f.stat().st_size:,} bytes of {size:,})")
    return folder


def read_tensors(pointer: Path, record: dict, prefixes: tuple[str, ...]) -> dict:
    """The tensors whose names start with one of `prefixes`, whole, in this one process
    (no process group needed), on the CPU."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = check_files(pointer, record)
    try:
        reader = dcp.FileSystemReader(folder)
        entries = reader.read_metadata().state_dict_metadata
        tensors = {k: torch.empty(tuple(md.size), dtype=md.properties.dtype) for k, md in entries.items()
                   if isinstance(md, TensorStorageMetadata) and k.startswith(prefixes)}
        with warnings.catch_warnings():  # that it reads in one process, which is what it is asked to do
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(tensors, storage_reader=reader, no_dist=True)
    except Exception as e:  # DCP raises its own wrapper types; any failure here is the files'
        raise ShardError(f"{pointer}: its shards in {folder} cannot be read ({first_line(e)})") from None
    return tensors


def load_tensors_into(pointer: Path, record: dict, tensors: dict) -> None:
    """Every rank, together: fill `tensors` (flat names; DTensors are filled with this
    rank's part, whatever number of ranks wrote them) from the shard folder."""
    import torch.distributed.checkpoint as dcp

    folder = check_files(pointer, record)
    try:
        dcp.load(tensors, storage_reader=dcp.FileSystemReader(folder))
    except Exception as e:
        raise ShardError(f"{pointer}: its shards in {folder} cannot be read ({first_line(e)})") from None


def split(tensors: dict, prefix: str) -> dict:
    """The entries under "PREFIX/", by the rest of their names."""
    head = prefix + "/"
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def flat_optimizer(state: dict) -> dict:
    """An optimizer state by parameter name ({NAME: {MOMENT: tensor}}) as flat tensor names."""
    return {f"optim/{name}/{moment}": t for name, moments in state.items() for moment, t in moments.items()}


def nested_optimizer(tensors: dict) -> dict:
    """`flat_optimizer` undone: parameter names may hold dots, never a slash."""
    out: dict = {}
    for key, t in split(tensors, "optim").items():
        name, moment = key.rsplit("/", 1)
        out.setdefault(name, {})[moment] = t
    return out


def by_index(state: dict, param_groups: list[dict]) -> dict:
    """An optimizer state keyed by parameter name (with its groups naming their parameters)
    as torch's `Optimizer.load_state_dict` takes it: parameters numbered in group order."""
    names = [n for g in param_groups for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    groups, start = [], 0
    for g in param_groups:
        groups.append({**g, "params": list(range(start, start + len(g["params"])))})
        start += len(g["params"])
    return {"state": {index[n]: s for n, s in state.items()}, "param_groups": groups}


def by_name(saved: dict, names: list[str]) -> tuple[dict, list[dict]]:
    """`by_index` undone: `names` are the parameters in the optimizer's group order."""
    groups, start = [], 0
    for g in saved["param_groups"]:
        groups.append({**g, "params": names[start : start + len(g["params"])]})
        start += len(g["params"])
    return {names[i]: s for i, s in saved["state"].items()}, groups
