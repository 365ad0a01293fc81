"""torch.distributed glue for torchrun: process group, DDP / FSDP2 wrapping, reductions.

Launch with ``torchrun --nproc_per_node=N -m lmstack pretrain ...``: torchrun sets RANK,
WORLD_SIZE and LOCAL_RANK, and this module picks gloo on CPU and NCCL on CUDA. Without those
variables everything runs single-process and the helpers below are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

STRATEGIES = ("ddp", "fsdp")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun described in the environment (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo, device: str) -> nn.Module:
    """DDP (replicated weights, all-reduced grads) or FSDP2 (``fully_shard``: sharded weights,
    grads and optimizer state; each transformer block is its own all-gather unit)."""
    if not info.enabled:
        return model
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown distributed strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.local_rank] if device.startswith("cuda") else None
        return DDP(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    for name in ("blocks", "layers", "h"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            return list(blocks)
    return []


def all_reduce_mean(value: float, info: DistInfo, device: str = "cpu") -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / info.world_size


def all_reduce_sum(values: list[float], info: DistInfo, device: str = "cpu") -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
