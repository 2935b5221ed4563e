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
from plumbing.fast_zlib import crc32

from .layout import SHARDS_FOLDER

METADATA = ".metadata"


class ShardError(Exception):
    """A sharded checkpoint whose files are missing, truncated or unreadable."""


def dcp_failures() -> tuple[type[BaseException], ...]:
    """What torch.distributed.checkpoint raises for files it cannot read or write: its
    CheckpointException derives from BaseException, beside whatever it did not wrap."""
    from torch.distributed.checkpoint.api import CheckpointException

    return (Exception, CheckpointException)


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


def checksums(folder: Path, rank: int) -> dict:
    """Every rank, after writing: the size and CRC-32 of the files it wrote (rank 0's include
    DCP's index), read back while they are still in the page cache, all ranks at once."""
    names = sorted(f.name for f in folder.glob(f"__{rank}_*.distcp")) + ([METADATA] if rank == 0 else [])
    return {name: [(folder / name).stat().st_size, file_crc32(folder / name)] for name in names}


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = crc32(block, crc)
    return crc


def settle(run_dir: Path, name: str, files: dict) -> dict:
    """Rank 0, after every rank has written: the folder renamed into place, and the record
    the pointer keeps of it (its place, relative to the run folder, and each file's size and
    CRC-32: `files`, every rank's `checksums`). A file no rank accounted for is refused."""
    tmp, final = staging(run_dir, name), run_dir / SHARDS_FOLDER / name
    unlisted = sorted(f.name for f in tmp.iterdir() if f.name not in files)
    if unlisted:
        raise ShardError(f"the new shard folder {tmp} holds files no process wrote: {', '.join(unlisted)}")
    sync_tree(tmp)
    os.replace(tmp, final)
    sync_folder(final.parent)
    return {"folder": f"{SHARDS_FOLDER}/{name}", "files": dict(sorted(files.items()))}


def remove_unreferenced(run_dir: Path, keep: set[str]) -> None:
    """Rank 0, after the pointer is written: the shard folders this toolkit wrote (and the
    staging a killed save left) that no checkpoint in the run folder names (`keep`). Folders
    of other names are left alone."""
    root = run_dir / SHARDS_FOLDER
    for entry in root.iterdir() if root.is_dir() else ():
        ours = entry.name.startswith(("step-", ".tmp-step-")) and entry.is_dir()
        if ours and entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def referenced(run_dir: Path, read_pointer) -> set[str]:
    """The shard folders that some checkpoint file in the run folder names: latest.pt,
    best.pt, and any copy of them kept beside them (`read_pointer(path)`: its record, or None)."""
    out = set()
    for path in run_dir.glob("*.pt"):
        record = read_pointer(path)
        if record:
            out.add(Path(record["folder"]).name)
    return out


def folder_of(pointer: Path, record: dict) -> Path:
    return pointer.parent / record["folder"]


def check_files(pointer: Path, record: dict, names: list[str] | None = None) -> Path:
    """The shard folder `record` names, each of its files (or of `names`) present with the
    size and CRC-32 it was written with; else one line naming the first that is not."""
    folder = folder_of(pointer, record)
    if not folder.is_dir():
        raise ShardError(f"{pointer} points to the shard folder {folder}, which is missing "
                         "(a checkpoint of a --fsdp run needs its shards/ folder beside it)")
    for name in record["files"] if names is None else names:
        size, crc = record["files"][name]
        f = folder / name
        if not f.is_file():
            raise ShardError(f"{pointer}: its shard file {f} is missing")
        if f.stat().st_size != size:
            raise ShardError(f"{pointer}: its shard file {f} is truncated or damaged "
                             f"({f.stat().st_size:,} bytes of {size:,})")
        if file_crc32(f) != crc:
            raise ShardError(f"{pointer}: its shard file {f} is damaged: its bytes do not match their checksum")
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
    except dcp_failures() as e:  # any failure here is the files'
        raise ShardError(f"{pointer}: its shards in {folder} cannot be read ({first_line(e)})") from None
    return tensors


def load_tensors_into(pointer: Path, record: dict, tensors: dict) -> None:
    """Every rank, together: fill `tensors` (flat names; DTensors are filled with this
    rank's part, whatever number of ranks wrote them) from the shard folder."""
    import torch.distributed.checkpoint as dcp

    folder = folder_of(pointer, record)  # its files checked by the caller, each rank some of them
    try:
        dcp.load(tensors, storage_reader=dcp.FileSystemReader(folder))
    except dcp_failures() as e:
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
