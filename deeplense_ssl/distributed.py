"""torch.distributed plumbing for pretraining: process-group set-up, sharding, reductions.

Launch with torchrun (one process per GPU, any number of nodes)::

    torchrun --nproc-per-node 4 -m deeplense_ssl_cli.main pretrain --data d.h5 --out run ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup_distributed` reads them and joins the group (NCCL on CUDA, gloo on CPU). Without
them (``WORLD_SIZE`` unset or 1) everything here is a no-op and training is single-process.

Conventions used by ``train.pretrain``:

* ``batch_size`` is per process; the global batch is ``batch_size * world_size``.
* One global batch is a contiguous slice of the epoch's permutation; rank ``r`` takes the
  ``r``-th ``batch_size`` chunk of it (:func:`shard_batch_indices`), so the global batch is the
  concatenation of the rank batches in rank order (what a single process would see).
* Only rank 0 writes files; every rank reads the same checkpoint when resuming (a shared
  filesystem across nodes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the (possibly trivial) process group.

    Attributes:
        rank: global rank (0 on a single process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the torch device this process computes on.
        owns_group: True when :func:`setup_distributed` created the group (and must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        device: the device resolved from the config (``cpu`` or ``cuda``); with CUDA and several
            processes each process takes ``cuda:LOCAL_RANK``.

    Returns:
        A :class:`DistInfo`. If a group is already initialised (e.g. by a test or the caller),
        it is used as is and not destroyed by :func:`cleanup_distributed`.

    Raises:
        ConfigError: inconsistent environment (e.g. more local ranks than visible GPUs).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = _device_for(device, local, world)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # NCCL collectives use the current device
        return DistInfo(rank, world, local, dev, owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device_for(device, local, world)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world,
        device_id=dev if dev.type == "cuda" else None,
    )
    return DistInfo(rank, world, local, dev, owns_group=True)


def _device_for(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    if device.type != "cuda" or world_size <= 1:
        return device
    n_gpus = torch.cuda.device_count()
    if local_rank >= n_gpus:
        raise ConfigError(
            f"LOCAL_RANK={local_rank} but only {n_gpus} GPU(s) are visible; start at most "
            f"{n_gpus} processes per node (torchrun --nproc-per-node)."
        )
    return torch.device("cuda", local_rank)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard_batch_indices(global_indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of one global batch.

    Args:
        global_indices: ``(world_size * batch_size,)`` image indices of one global batch.
        rank: this process's rank.
        world_size: number of processes.

    Returns:
        ``(batch_size,)`` indices: the ``rank``-th contiguous chunk, so that concatenating the
        chunks of all ranks in rank order gives back ``global_indices``.
    """
    if len(global_indices) % world_size:
        raise ValueError(f"{len(global_indices)} indices cannot be split over {world_size} ranks.")
    per_rank = len(global_indices) // world_size
    return global_indices[rank * per_rank : (rank + 1) * per_rank]


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over all ranks (returned unchanged on a single process)."""
    if not info.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` on a single process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op on a single process)."""
    if info.enabled:
        dist.barrier()
