"""Data-parallel training across processes started by PyTorch's `torchrun`.

`torchrun` sets RANK, LOCAL_RANK and WORLD_SIZE; `gpt-train` (or `python -m gpt.train`)
sees them and joins the process group: NCCL on CUDA (one GPU per process, by local rank),
gloo on CPU. Without them everything here is the single-process no-op.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# a rank that dies stops the others at their next collective within this time,
# instead of leaving them waiting forever
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("GPT_DIST_TIMEOUT", "600")))


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=op)
        return t

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (a small plain value: the run folder's name)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list:
        """Every rank's `obj` on every rank (small plain values: RNG and sampler states)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self, finished: bool = False) -> None:
        """Leave the group. After a finished run every rank first waits for the others:
        gloo aborts a process ("terminate called without an active exception") when
        its peer tears the group down while it is still using it."""
        if dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_name: str) -> tuple[Dist, str]:
    """Join the process group when started by torchrun. Returns the Dist and the device
    this process should use (its own GPU by local rank when the device is CUDA)."""
    if not launched_by_torchrun():
        return Dist(), device_name
    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            from ..device import DeviceError

            raise DeviceError(f"--device {device_name}: CUDA is not available on this machine")
        torch.cuda.set_device(d.local_rank)
        device_name = f"cuda:{d.local_rank}"
    backend = "nccl" if use_cuda else "gloo"
    kwargs = {"device_id": torch.device(device_name)} if use_cuda else {}
    dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT, **kwargs)
    return d, device_name if device_name != "auto" else "cpu"
