"""Process groups and the collectives every room shares: the one place a process group is set up.

Setup: torchrun worlds of any size, and a world of 1 for a plain `python -m` run. Collectives
(`gather_objects`, `any_rank`, `all_ranks`, `max_over_ranks`) work with no process group at all (one
process), so single-process evaluation and tests call the same code.

Collectives get a finite timeout: when a peer dies, a rank blocked in a collective raises instead of
waiting forever, so the job always ends. (torchrun also stops the other workers as soon as one exits
non-zero.) Two timeouts: a long one while the run starts (`startup_timeout_s`: rank 0 reading a big
checkpoint, ZeRO-3 partitioning, JIT-compiled ops; the other ranks wait in a collective meanwhile),
then, once the first step is done, a short one for the steps (`distributed_timeout_s`), so a rank that
dies mid-run ends the job in minutes instead of an hour.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# The oldest DeepSpeed our tests run on. Older releases differ where it matters here: 0.16 ZeRO checks
# only fp16 steps for overflow (a non-finite bf16 step is applied), and defaults such as
# gradient_clipping (0.19.3) and offload pin_memory (0.19.5) changed since.
MIN_DEEPSPEED_VERSION = (0, 19, 8)


def check_deepspeed_version(version: str | None = None) -> None:
    """Raises RuntimeError naming both versions when DeepSpeed (or `version`) is older than the minimum."""
    if version is None:
        import deepspeed

        version = deepspeed.__version__
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers < MIN_DEEPSPEED_VERSION:
        minimum = ".".join(map(str, MIN_DEEPSPEED_VERSION))
        raise RuntimeError(
            f"DeepSpeed {version} is older than {minimum}, the oldest version seq2vae is tested with: "
            f"pip install 'deepspeed>={minimum},<0.20'"
        )


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


def install_extensions_dir(prefix: str | Path | None = None) -> Path | None:
    """Where JIT-compiled DeepSpeed ops of this install go: PREFIX/share/seq2vae/torch_extensions/<key>.

    torch's default (~/.cache/torch_extensions/py311_cu124) is shared by every environment under one
    home directory whatever its torch and DeepSpeed versions, so two virtualenvs of a cluster user
    overwrite each other's builds and each rebuilds (about 90 s on 2 CPU cores, minutes for the CUDA
    ops) when the other ran last. Keyed by Python, accelerator, torch and DeepSpeed, under the
    environment's own prefix (`sys.prefix`), an op is built once per install. None when that prefix is
    not writable (a shared read-only install): torch's default then applies.
    """
    import deepspeed

    accelerator = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    key = (f"py{sys.version_info.major}{sys.version_info.minor}_{accelerator}_torch{torch.__version__}"
           f"_deepspeed{deepspeed.__version__}").replace("+", "-")
    directory = Path(sys.prefix if prefix is None else prefix) / "share" / "seq2vae" / "torch_extensions" / key
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory if os.access(directory, os.W_OK) else None


def use_install_extensions_dir() -> None:
    """Sets TORCH_EXTENSIONS_DIR to `install_extensions_dir()` unless the user set it (theirs wins)."""
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        directory = install_extensions_dir()
        if directory is not None:
            os.environ["TORCH_EXTENSIONS_DIR"] = str(directory)


def init_world(timeout_s: int) -> World:
    """Initialises torch.distributed through DeepSpeed (gloo on CPU, NCCL on GPU), once per process.

    `timeout_s` is the collective timeout until `set_collective_timeout` changes it (the trainer passes
    its start-up timeout here and the step timeout after the first step).

    Without torchrun's variables it starts a world of one on a free loopback port. The group is
    never torn down by the trainer: DeepSpeed caches it, so a second `trainer.run` in the same
    process reuses it; the process's entry point calls `shutdown_world` at the end.
    """
    import deepspeed

    check_deepspeed_version(deepspeed.__version__)
    use_install_extensions_dir()  # before the first op (the CPU all-reduce, fused Adam) is built
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    cpu = on_cpu()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cpu:
        device = torch.device("cpu")
        # DeepSpeed's CPU accelerator answers device_count() from LOCAL_SIZE, which its own launcher
        # sets; without it, ZeRO-3 spawns `numactl --hardware` for every gradient bucket (~35 times a step).
        os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1"))
    else:
        torch.cuda.set_device(local_rank)  # before NCCL initialises, so each rank talks from its own GPU
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="gloo" if cpu else "nccl", timeout=timedelta(seconds=timeout_s), verbose=False
        )
        if cpu:
            _unlink_shared_memory_buffer(dist.get_rank())
    else:
        set_collective_timeout(timeout_s)  # a later run in this process: its start-up timeout again
    return World(rank=dist.get_rank(), local_rank=local_rank, size=dist.get_world_size(), device=device)


def _unlink_shared_memory_buffer(rank: int) -> None:
    """Removes this rank's /dev/shm name of DeepSpeed's CPU all-reduce buffer once every rank maps it.

    DeepSpeed's CPU comm (ops/csrc/cpu/comm/shm.cpp) creates `deepspeed_allreduce_buffer_<uid>_<addr>_
    <port>_<rank>` (~66 MiB) at start-up and never unlinks it: every CPU run left its buffers in RAM
    (seen: 21 GB of them after a day of tests). Each rank maps all ranks' buffers inside
    init_distributed, so after a barrier the names are no longer needed; the mappings stay valid
    until the process exits, however it exits.
    """

    dist.barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{rank}"
    Path("/dev/shm", name).unlink(missing_ok=True)


def set_collective_timeout(timeout_s: float) -> None:
    """Sets the timeout of every process group this rank belongs to (the default one and any that
    DeepSpeed created, e.g. ZeRO's data-parallel groups); later collectives use it.

    All ranks should call it at the same point (the trainer: after the first step). gloo and NCCL
    groups only; torch warns about others and leaves them as they are.
    """
    from torch.distributed import distributed_c10d

    if not dist.is_initialized():
        return
    timeout = timedelta(seconds=timeout_s)
    for group in list(distributed_c10d._world.pg_map):
        if not distributed_c10d._rank_not_in_group(group):
            distributed_c10d._set_pg_timeout(timeout, group)


def shutdown_world() -> None:
    """Destroys the process group: call once, when a process's last `trainer.run` has returned normally.

    A gloo group left up at interpreter exit can abort the process (SIGABRT, "terminate called without
    an active exception") after its work is done, turning a finished run into a failed job; NCCL warns
    of leaked communicators. Not called on errors: a rank that fails exits and torchrun stops the rest.
    """

    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device_name: str | None):
    """Joins the torchrun process group when launched by torchrun (NCCL on GPUs, gloo on CPU), without
    DeepSpeed (evaluation of a replica needs none); yields the device. Leaves the group it created."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() if device_name is None else device_name.startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    created = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    try:
        yield device
    finally:
        if created:
            dist.destroy_process_group()


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def model_construction(ds_config: dict[str, Any]) -> tuple[contextlib.AbstractContextManager, Any]:
    """(the context to build a model in, an object to keep alive as long as its engine) for `ds_config`.

    The one place a model meant for a ZeRO-3 engine is constructed (training's engine and
    evaluation's `load_zero3`): inside `deepspeed.zero.Init` every parameter is partitioned the moment
    it is created, and while transformers' `HfDeepSpeedConfig` lives `from_pretrained` lets rank 0 read
    the weights and partitions them, so an 11B backbone never materialises whole on one rank. Other
    stages build normally: (nullcontext, None).
    """
    if zero_stage(ds_config) != 3:
        return contextlib.nullcontext(), None
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(ds_config)  # before zero.Init: from_pretrained reads it while it lives
    return deepspeed.zero.Init(config_dict_or_path=ds_config), keep_alive


def parameter_reader(stage: int) -> Callable[[list], contextlib.AbstractContextManager] | None:
    """`params -> context` in which ZeRO-3-partitioned parameters are whole on every rank, for reading
    (a collective: all ranks enter it together); None on other stages, where parameters are whole."""
    if stage != 3:
        return None
    import deepspeed

    return lambda params: deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def resident_under_zero3(
    parameters: Iterable[torch.nn.Parameter], device: torch.device
) -> contextlib.AbstractContextManager:
    """A context in which ZeRO-3 partitioned `parameters` are gathered once and stay whole.

    ZeRO-3 gathers a module's parameters before each forward and frees them after it; outside a
    training step its trace never completes, and then even `ds_persist` parameters are freed, so
    token-by-token generation all-gathers the decoder once per token. The release hook keeps
    parameters marked `is_external_param` (DeepSpeed 0.19 partitioned_param_coordinator.
    release_sub_module): marked for the block, they are all-gathered once at entry and partitioned
    again at exit. Only when every rank's GPU has room for them (1.25x their bytes free; always on
    CPU): ZeRO-3 is chosen for evaluation when a replica does not fit, and half of it may not
    either. A collective: every rank enters with the same parameters. Parameters not partitioned by
    ZeRO-3 (no `ds_id`): a no-op.
    """
    partitioned = [p for p in parameters if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    fits = True
    if device.type == "cuda":
        needed = sum(p.ds_numel * p.element_size() for p in partitioned)
        fits = 1.25 * needed < torch.cuda.mem_get_info(device)[0]
    if not all_ranks(fits, collective_device(device)):
        return contextlib.nullcontext()
    return _resident(partitioned)


@contextlib.contextmanager
def _resident(partitioned: list[torch.nn.Parameter]):
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    missing = [p for p in partitioned if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    if missing:
        missing[0].all_gather(param_list=missing)
    external = [parameter.is_external_param for parameter in partitioned]
    for parameter in partitioned:
        parameter.is_external_param = True
    try:
        yield
    finally:
        for parameter, was_external in zip(partitioned, external, strict=True):
            parameter.is_external_param = was_external
        available = [p for p in partitioned if p.ds_status == ZeroParamStatus.AVAILABLE]
        if available:
            available[0].partition(param_list=available)


def barrier() -> None:

    if dist.is_initialized():
        dist.barrier()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
