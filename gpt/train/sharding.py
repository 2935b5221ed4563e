"""Fully sharded data parallel (gpt-train --fsdp): the model, its gradients and its
optimizer state split across the processes torchrun starts.

Under DDP each of N processes holds every weight, its gradient and AdamW's two moments: 16
bytes a weight per process in fp32, whatever N. Under FSDP (PyTorch's FSDP2, `fully_shard`)
each process keeps 1/N of each, 16/N bytes a weight, and gathers a block's whole weights from
the others just before its forward and again before its backward pass, freeing them after.
Each transformer block is one such unit; the embeddings, the final norm and the head are the
root's, gathered for the whole step.

What stays as under DDP: each rank's own batches, autocast's mixed precision, the schedule,
and a step's update (the same global batch gives the same update, up to the order of
floating-point sums; tested against DDP on CPU). In bf16 the blocks' weights are also
gathered in bf16 (FSDP's MixedPrecisionPolicy): the same products autocast computes from fp32
weights, without autocast's bf16 copy of every weight, which would stay alive until the
backward pass; gradients are reduced in fp32. Gradients are reduced at every micro-step of --grad-accum, so
they stay sharded (DDP reduces once per step and keeps whole gradients).

Checkpoints are sharded too (`gpt.store.sharded`): every rank writes its part.
"""
from __future__ import annotations

import warnings

import torch

from plumbing.errors import first_line

from ..store import sharded
from ..store.checkpoint import save_checkpoint
from ..store.layout import LATEST
from .errors import TrainError


def shard_model(model: torch.nn.Module, device: torch.device, world_size: int, dtype: torch.dtype) -> None:
    """Shard `model` in place across the process group, each block a unit, then the root;
    parameters become DTensors holding this rank's part, on `device`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    # fp16 is refused with --fsdp (its gradient scaler would see only this rank's part of
    # the gradients when looking for overflows): only bf16 is gathered in half precision
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if dtype == torch.bfloat16 else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh)
    # FSDP warns that the logits it hands back are a view, which an in-place change would
    # cut from its hooks: nothing here changes them in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    model.sharded_blocks = True  # blocks called through their hooks, where FSDP gathers their weights


def optimizer_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters' names, in its group order."""
    name = {id(p): n for n, p in model.named_parameters()}
    return [name[id(p)] for g in optimizer.param_groups for p in g["params"]]


def tensors_to_save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, average) -> tuple[dict, list]:
    """This rank's parts, by their names in the shard folder, and the optimizer's settings
    (its parameter groups, plain values) for the pointer file."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    tensors = sharded.flat_optimizer(optim["state"])
    if average is None:
        tensors.update({f"model/{k}": v for k, v in weights.items()})
    else:  # the run's model is the average; the optimizer's own weights go beside it
        tensors.update({f"trained_model/{k}": v for k, v in weights.items()})
        with average.applied():
            tensors.update({f"model/{k}": v.detach().clone() for k, v in get_model_state_dict(model).items()})
    return tensors, optim["param_groups"]


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, average, pointer, record: dict,
                 averaged: bool) -> None:
    """Every rank, together: its parts of a sharded checkpoint, written by any number of ranks.
    `averaged`: the checkpoint keeps an average, its trained weights beside it (which are
    what the optimizer continues from, also in a run resumed without --ema)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optim = get_state_dict(model, optimizer)  # shaped like this rank's parts; AdamW's state made
    tensors = sharded.flat_optimizer(optim["state"])
    tensors.update({f"{'trained_model' if averaged else 'model'}/{k}": v for k, v in weights.items()})
    if average is not None:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        tensors.update({f"model/{n}": a for n, a in zip(names, average.average)})  # filled in place
    sharded.load_tensors_into(pointer, record, tensors)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim)


def load_whole(model: torch.nn.Module, optimizer: torch.optim.Optimizer, average, state: dict) -> None:
    """Every rank, together: a checkpoint in one file (one process's, or DDP's) into the
    sharded model and optimizer, each rank keeping its part."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    full = StateDictOptions(full_state_dict=True)
    named, groups = sharded.by_name(state["optimizer"], optimizer_names(model, optimizer))
    set_state_dict(model, optimizer, model_state_dict=state.get("trained_model", state["model"]),
                   optim_state_dict={"state": named, "param_groups": groups}, options=full)
    if average is not None:
        with average.applied():  # the average's values, set through the parameters it stands in for
            set_model_state_dict(model, state["model"], options=full)


def all_finite(model: torch.nn.Module, dist_) -> bool:
    """Whether every rank's part of the weights is finite."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    bad = torch.tensor([float(not all(bool(t.isfinite().all()) for t in local))], device=local[0].device)
    return not dist_.all_reduce(bad).item()


def restore(trainer, state: dict) -> None:
    """A resumed run's parts under FSDP: from a sharded checkpoint (written by any number of
    ranks) or from one in a single file (a single process's or DDP's)."""
    adamw = trainer.optimizers.adamw
    if state.get("sharded"):
        check_shares(trainer.resume_from, state["sharded"], trainer.dist)
        try:
            load_sharded(trainer.model, adamw, trainer.average, trainer.resume_from, state["sharded"],
                         averaged=state.get("average_updates") is not None)
        except sharded.ShardError as e:
            raise TrainError(str(e)) from None
    else:
        load_whole(trainer.model, adamw, trainer.average, state)
    if not all_finite(trainer.model, trainer.dist):
        raise TrainError(f"--resume: the weights in {trainer.resume_from} are not finite numbers "
                         "(the files are damaged, or the run diverged before it was saved)")


def check_shares(pointer, record: dict, dist_) -> None:
    """Every rank checks its share of the shard files (sizes and CRC-32s), and every rank
    stops with the first failure any found."""
    names = sorted(record["files"])[dist_.rank :: dist_.world_size]
    try:
        sharded.check_files(pointer, record, names)
        found = None
    except sharded.ShardError as e:
        found = str(e)
    failures = [f for f in dist_.gather_objects(found) if f]
    if failures:
        raise TrainError(failures[0])


def save(trainer, state: dict, best: bool) -> None:
    """Every rank writes its part into a new shard folder; rank 0 then renames it into place
    and points latest.pt (and best.pt) at it. A failure on any rank is raised on every rank
    (as a ShardError or an OSError)."""
    dist_, run_dir = trainer.dist, trainer.run_dir
    name = dist_.broadcast_object(sharded.new_folder_name(trainer.step) if dist_.is_main else None)
    failed = None
    if dist_.is_main:
        try:
            sharded.prepare_staging(run_dir, name)
        except OSError as e:
            failed = e.strerror or first_line(e)
    failed = dist_.broadcast_object(failed)  # every rank stops, not just the first
    if failed:
        raise sharded.ShardError(failed)
    tensors, groups = tensors_to_save(trainer.model, trainer.optimizers.adamw, trainer.average)
    folder = sharded.staging(run_dir, name)
    try:
        sharded.write_tensors(tensors, folder)
    except sharded.dcp_failures() as e:  # DCP gathers every rank's failure and raises it on every rank
        raise sharded.ShardError(first_line(e)) from None
    files = {}
    for part in dist_.gather_objects(sharded.checksums(folder, dist_.rank)):
        files.update(part)
    if dist_.is_main:
        record = {**sharded.settle(run_dir, name, files), "param_groups": groups}
        save_checkpoint(run_dir / LATEST, {**state, "sharded": record}, best=best)


def whole_model(model: torch.nn.Module, config, is_main: bool) -> torch.nn.Module | None:
    """Every rank, together: the sharded model's weights gathered into a plain model on
    rank 0's host (None on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..model import build_model

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main:
        return None
    whole = build_model(config)
    whole.load_state_dict(weights)
    return whole.eval()
