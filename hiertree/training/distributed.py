"""DistributedDataParallel plumbing for the trainer: the process group, rank agreement, buffer averaging."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from hiertree.checkpoint import state_digest, unwrap
from hiertree.device import resolve_device
from hiertree.training.run_state import TrainingError

__all__ = ["world_size", "setup", "check_gpus", "agree", "average_buffers", "check_ranks_agree"]

log = logging.getLogger(__name__)


def world_size() -> int:
    """Processes in this run (``WORLD_SIZE`` as torchrun sets it; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_spec: str, timeout_s: float = 1800.0) -> tuple[torch.device, int, int]:
    """``(device, rank, world)``; under torchrun joins the process group (NCCL on CUDA, gloo on CPU), whose
    collectives wait ``timeout_s`` for a slow rank (``train.dist_timeout``)."""
    device, world = resolve_device(device_spec), world_size()
    if world == 1:
        return device, 0, 1
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        check_gpus(local)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return device, rank, world


def check_gpus(local_rank: int) -> None:
    """One process per GPU: a local rank beyond the machine's CUDA devices is refused in one line."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1))
        raise TrainingError(
            f"torchrun started {per_node} processes on this machine but it has {count} CUDA device(s): local rank "
            f"{local_rank} has none; run `torchrun --nproc_per_node {max(count, 1)} ...`, or train.device=cpu to "
            "train on the CPU with gloo"
        )


def agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on any rank is true on every rank (so all ranks skip or stop at the same step)."""
    if not dist.is_initialized():
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def average_buffers(model: torch.nn.Module) -> None:
    """Average floating buffers (BatchNorm running stats) over ranks before evaluating or saving.

    DDP broadcasts rank 0's buffers at each forward, but the last forward's update leaves every rank
    with its own; averaging makes all ranks (and the checkpoint) hold the same, better estimate.
    """
    world = dist.get_world_size()
    for buf in unwrap(model).buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(world)


def check_ranks_agree(model: torch.nn.Module) -> str:
    """Every rank must end with the same weights and buffers; returns their sha256."""
    digest = state_digest(unwrap(model).state_dict())
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise TrainingError(f"after training the ranks hold different weights (sha256 per rank: {digests}); "
                            "this is a bug or a non-deterministic op under DDP -- please report it")
    log.info("all %d ranks hold identical weights (sha256 %s)", len(digests), digest)
    return digest
