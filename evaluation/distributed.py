"""Rank bookkeeping for evaluation: which batch each rank runs in each round, and exact gathering.

Evaluation splits whole batches across ranks (batch b goes to rank b % world_size), so every batch
holds the same sentences, padded the same way, whatever the number of ranks: per-sentence results
are identical for 1 or many ranks. Every rank runs the same number of rounds (a rank without a real
batch in the last round runs a dummy one and drops its results), because under ZeRO-3 a rank that
skips a forward deadlocks the others. Works with no process group at all (one process).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class Round:
    index: int
    batch: int | None  # the global batch index this rank runs, None for a dummy round
    first_sentence: int  # global index of the round's first sentence over all ranks (for per-round decisions)


def plan_rounds(num_sentences: int, batch_size: int, rank: int, world_size: int) -> Iterator[Round]:
    """The rounds one rank runs: batch b covers sentences [b*B, (b+1)*B) and runs on rank b % world_size."""
    num_batches = math.ceil(num_sentences / batch_size)
    for index in range(math.ceil(num_batches / world_size)):
        batch = index * world_size + rank
        yield Round(index, batch if batch < num_batches else None, index * world_size * batch_size)


def gather_objects(local: Any) -> list[Any]:
    """Every rank's `local` (picklable; CPU tensors keep their exact bits), in rank order."""
    rank, world_size = rank_and_world()
    if world_size == 1:
        return [local]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, local)
    return gathered


def max_over_ranks(value: int, device: torch.device) -> int:
    """The largest `value` over all ranks (a collective: every rank must call it)."""
    _, world_size = rank_and_world()
    if world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on at least one rank (a collective: every rank must call it)."""
    _, world_size = rank_and_world()
    if world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_ranks(flag: bool, device: torch.device) -> bool:
    """True when `flag` is true on every rank (a collective)."""
    return not any_rank(not flag, device)


def collective_device(model_device: torch.device) -> torch.device:
    """Where small tensors for all_reduce must live: the model's GPU under NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return model_device
    return torch.device("cpu")
