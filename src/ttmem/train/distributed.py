"""Process-group setup for `torchrun`, and wrapping a model in DDP or FSDP.

Design: a run is distributed exactly when torchrun's WORLD_SIZE > 1 is in the environment; then the
backend is NCCL on GPUs and gloo on CPU. Only rank 0 writes files. The model is wrapped after it is
built with the same seed on every rank (DDP also broadcasts rank 0's weights). FSDP is PyTorch's
per-parameter sharding (`fully_shard`, which also runs on CPU with gloo), applied to every block of
the model's layer lists and then to the root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, env: DistEnv) -> torch.device:
    if env.enabled and torch.cuda.is_available() and requested in ("auto", "cuda"):
        gpus = torch.cuda.device_count()
        if env.local_rank >= gpus:
            raise ValueError(
                f"config key 'device' is {requested}: process {env.local_rank} of this node has no GPU of its own "
                f"({gpus} visible); start at most {gpus} processes per node or set device=cpu"
            )
    if requested == "auto":
        return torch.device(f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"config key 'device' is not a torch device: '{requested}'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("config key 'device' asks for cuda but no GPU is available")
    if device.type == "cuda" and env.enabled:
        return torch.device(f"cuda:{env.local_rank}")
    return device


def init_distributed(device_type: str) -> DistEnv:
    """Join torchrun's process group if WORLD_SIZE > 1 (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend)
    return env


def shutdown_distributed(finished: bool = True) -> None:
    """Leave the process group. After a run every process finished (`finished`), all meet at a barrier
    first: a process that tears its group down while a peer is still writing a checkpoint or sending
    its last message can leave that peer, or the launcher, waiting at exit. After an error, no barrier
    (a peer may never arrive)."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def wrap_model(model: nn.Module, env: DistEnv, strategy: str, device: torch.device) -> nn.Module:
    """`model` in DDP or FSDP when distributed, unchanged otherwise."""
    if not env.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard every block of every ModuleList (the layers), then the root (embeddings, head).
        for container in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
            for block in container:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block)
        return fully_shard(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / FSDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
