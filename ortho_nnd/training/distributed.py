"""Distributed data parallel (DDP) set-up for torchrun launches, with a single-process fallback.

Public API:

- ``init_distributed(device) -> DistributedContext`` reads the torchrun environment
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins the
  process group: NCCL when ``device`` is CUDA, gloo otherwise. Without ``WORLD_SIZE`` (or with
  ``WORLD_SIZE=1``) it does nothing and returns a rank-0, world-size-1 context.
- ``is_distributed()``, ``get_rank()``, ``get_world_size()``, ``is_main_process()``
- ``barrier()``, ``all_reduce_mean(tensor)``, ``all_reduce_max(tensor)``, ``broadcast_object(value)``,
  ``all_gather_object(value)``
- ``wrap_ddp(model, device, find_unused_parameters=False)`` returns ``DistributedDataParallel(model)`` in a multi-process run
  and ``model`` unchanged otherwise; ``unwrap_model(model)`` returns the inner module.
- ``cleanup_distributed()`` destroys the process group if this module created one.

All collective helpers are no-ops in a single-process run, so trainers call them unconditionally.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

# How long a collective may wait for the other ranks before failing. Checkpoint writes on rank 0
# happen while the others wait at a barrier, so this must exceed the slowest checkpoint write.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str | None

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


_created_group = False


def _int_from_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"Invalid environment variable {name}={value!r}: expected an integer (set by torchrun).") from error


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the torchrun process group, or return a single-process context when not launched by torchrun.

    For CUDA, the local rank selects the GPU (``torch.cuda.set_device``), so ``device`` should
    be the plain ``cuda`` device; use ``local_device(context, device)`` to get the per-rank one.
    """
    global _created_group

    world_size = _int_from_env("WORLD_SIZE", 1)
    rank = _int_from_env("RANK", 0)
    local_rank = _int_from_env("LOCAL_RANK", 0)

    if world_size <= 1:
        return DistributedContext(rank=0, world_size=1, local_rank=0, backend=None)

    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {name} is not set. Launch multi-process training with torchrun, "
                "which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT."
            )

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible. "
                "Set --nproc_per_node to at most the number of GPUs on the node."
            )
        torch.cuda.set_device(local_rank)
    elif device.type == "mps":
        raise RuntimeError("Multi-process training on mps is not supported; use -device cpu or a CUDA machine.")

    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT)
        _created_group = True
    logger.info("Joined process group: backend %s, rank %d of %d, local rank %d", backend, rank, world_size, local_rank)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def local_device(context: DistributedContext, device: torch.device) -> torch.device:
    """Return the device this rank computes on (``cuda:LOCAL_RANK`` for CUDA)."""
    if device.type == "cuda" and context.world_size > 1:
        return torch.device("cuda", context.local_rank)
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Return the mean of ``tensor`` over all ranks (a copy; the input is not modified)."""
    result = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
        result /= get_world_size()
    return result


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Return the element-wise maximum of ``tensor`` over all ranks (a copy)."""
    result = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(result, op=dist.ReduceOp.MAX)
    return result


def broadcast_object(value: Any, source_rank: int = 0) -> Any:
    """Return ``value`` from ``source_rank`` on every rank (uses pickle over the process group, in memory only)."""
    if not is_distributed():
        return value
    container = [value]
    dist.broadcast_object_list(container, src=source_rank)
    return container[0]


def all_gather_object(value: Any) -> list[Any]:
    """Return ``[value of rank 0, value of rank 1, ...]`` on every rank (pickle in memory only)."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """Wrap ``model`` in DistributedDataParallel in a multi-process run; return it unchanged otherwise.

    Set ``find_unused_parameters`` when some trainable parameters get no gradient in a step
    (DDP otherwise waits for them and raises); it costs an extra graph traversal per step.
    """
    if not is_distributed():
        return model
    if device.type == "cuda":
        return DistributedDataParallel(
            model, device_ids=[device.index], output_device=device.index, find_unused_parameters=find_unused_parameters
        )
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module inside DDP and ``torch.compile`` wrappers."""
    # torch.compile returns an OptimizedModule that keeps the original in `_orig_mod`; either
    # wrapper may be the outer one.
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def cleanup_distributed() -> None:
    """Destroy the process group if ``init_distributed`` created it."""
    global _created_group
    if _created_group and dist.is_initialized():
        dist.destroy_process_group()
    _created_group = False
