"""Process-group setup: torchrun worlds of any size, and a world of 1 for a plain `python -m` run.

Collectives get a finite timeout (`distributed_timeout_s`): when a peer dies, a rank blocked in a
collective raises instead of waiting forever, so the job always ends. (torchrun also stops the other
workers as soon as one exits non-zero.)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (rendezvous of a local world; tests' torchrun launches)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_cpu() -> bool:
    """True when DeepSpeed runs on its CPU accelerator (DS_ACCELERATOR=cpu, or no GPU at all)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def init_world(timeout_s: int) -> World:
    """Initialises torch.distributed through DeepSpeed (gloo on CPU, NCCL on GPU), once per process.

    Without torchrun's variables it starts a world of one on a free loopback port. The group is
    never torn down by the trainer: DeepSpeed caches it, so a second `trainer.run` in the same
    process reuses it; the process's entry point calls `shutdown_world` at the end.
    """
    import deepspeed
    import torch.distributed as dist

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    cpu = on_cpu()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cpu:
        device = torch.device("cpu")
    else:
        torch.cuda.set_device(local_rank)  # before NCCL initialises, so each rank talks from its own GPU
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="gloo" if cpu else "nccl", timeout=timedelta(seconds=timeout_s), verbose=False
        )
    return World(rank=dist.get_rank(), local_rank=local_rank, size=dist.get_world_size(), device=device)


def shutdown_world() -> None:
    """Destroys the process group: call once, when a process's last `trainer.run` has returned normally.

    A gloo group left up at interpreter exit can abort the process (SIGABRT, "terminate called without
    an active exception") after its work is done, turning a finished run into a failed job; NCCL warns
    of leaked communicators. Not called on errors: a rank that fails exits and torchrun stops the rest.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
