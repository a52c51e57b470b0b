"""What a job asks of the cluster: nodes, ranks, resources, queue, logs, preemption policy.

One `JobOptions` describes the allocation and the launch; it says nothing about training itself
(that is the training config's business). `check_options` rejects impossible requests before
anything reaches `sbatch`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, doc


@dataclass
class JobOptions:
    nodes: int = doc(1, "nodes in the allocation; one torchrun per node, all joining one rendezvous")
    device: Literal["cuda", "cpu"] = doc(
        "cuda", "cuda: one rank per GPU (NCCL); cpu: a CPU-only job (gloo, DS_ACCELERATOR=cpu)"
    )
    gpus_per_node: int | None = doc(None, "GPUs requested per node; null = 1 for cuda, 0 for cpu")
    ranks_per_node: int | None = doc(
        None, "training processes per node; null = gpus_per_node for cuda, 1 for cpu"
    )
    cpus_per_task: int | None = doc(
        None, "CPUs for the one task per node (it hosts all that node's ranks); null = cpus_per_gpu x GPUs for cuda"
    )
    mem: str | None = doc(None, "memory per node, in sbatch syntax (e.g. 480G); null = mem_per_gpu x GPUs for cuda")
    cpus_per_gpu: int = doc(
        8, "cuda jobs without --cpus-per-task: CPUs per GPU (without any, SLURM gives the job one CPU per node)"
    )
    mem_per_gpu: str = doc(
        "64G", "cuda jobs without --mem: host memory per GPU (without it, the partition's default memory per node)"
    )
    exclusive: bool = doc(
        False, "whole nodes: --exclusive and --mem=0 (all of each node's CPUs and memory) instead of the per-GPU defaults"
    )
    partition: str | None = doc(None, "partition (queue); null = the cluster default")
    account: str | None = doc(None, "account charged for the job")
    qos: str | None = doc(None, "quality of service")
    time: str | None = doc(None, "time limit in sbatch syntax (e.g. 2-00:00:00); null = the partition default")
    constraint: str | None = doc(None, "node feature constraint (e.g. a100|h100)")
    job_name: str | None = doc(None, "job name; null = seq2vae-<kind>-<config file stem>")
    sbatch_lines: list[str] = doc(
        default_factory=list,
        help="extra sbatch options: 'exclusive', 'mail-type=END' or '#SBATCH --gres=nvme:1' (leading dashes optional)",
    )
    setup_lines: list[str] = doc(
        default_factory=list,
        help="shell lines run before launching, e.g. 'module load cuda/12.4' or 'source venv/bin/activate'",
    )
    output_dir: str = doc("slurm-logs", "directory of the job logs (created when rendering)")
    workdir: str | None = doc(None, "working directory of the job; null = where you render (relative paths keep their meaning)")
    module: str | None = doc(None, "Python module torchrun runs for train and sweep jobs; null = seq2vae.train")
    eval_args: str | None = doc(
        None, "eval jobs: extra `seq2vae eval` arguments, e.g. '--iw-samples 500 --batch-size 32'"
    )
    max_restarts: int = doc(3, "times a preempted or timed-out job requeues itself before giving up")
    signal_seconds: int | None = doc(
        None,
        "seconds before the time limit at which SLURM warns the job (USR1) so the trainer can save; null = "
        "derived from the run's last measured save (else the planned checkpoint size), at least 120; "
        "0 = no warning: the job saves on SLURM's TERM at the limit, within KillWait",
    )
    max_parallel: int | None = doc(None, "sweeps: array tasks running at once (the %N of --array); null = no cap")
    torch_extensions_dir: str = doc(
        '"${SLURM_TMPDIR:-/tmp/$(id -un)}/torch_extensions"',
        "where DeepSpeed JIT-builds its ops, as a shell word; default node-local: per job under $SLURM_TMPDIR "
        "where the site sets it, else kept in /tmp between jobs (built once per node)",
    )
    requeue_on_failure: int = doc(
        0, "times a job that failed (non-zero exit, not a preemption) requeues itself to resume from its latest checkpoint"
    )
    check_partition: bool = doc(
        True, "ask sinfo whether the partition has GPUs before rendering a GPU job (off: rendering for another cluster)"
    )


@dataclass(frozen=True)
class Layout:
    """The resolved process layout of a job."""

    nodes: int
    gpus_per_node: int
    ranks_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node


def resolve_layout(options: JobOptions) -> Layout:
    """Fills the per-node defaults and rejects impossible combinations (ConfigError naming the option)."""
    if options.nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {options.nodes}")
    if options.device == "cpu":
        gpus = 0 if options.gpus_per_node is None else options.gpus_per_node
        if gpus > 0:
            raise ConfigError(
                f"--gpus-per-node {gpus} on a CPU-only job (--device cpu): a CPU job cannot use GPUs; "
                "drop --gpus-per-node or use --device cuda"
            )
        ranks = 1 if options.ranks_per_node is None else options.ranks_per_node
    else:
        gpus = 1 if options.gpus_per_node is None else options.gpus_per_node
        if gpus < 1:
            raise ConfigError(
                f"--gpus-per-node {gpus} on a CUDA job: ask for at least one GPU per node, "
                "or use --device cpu for a CPU-only job"
            )
        ranks = gpus if options.ranks_per_node is None else options.ranks_per_node
        if ranks != gpus:
            # One rank per GPU: torchrun's local rank is the CUDA device index.
            raise ConfigError(
                f"--ranks-per-node {ranks} differs from --gpus-per-node {gpus}: a CUDA job runs one rank per GPU"
            )
    if ranks < 1:
        raise ConfigError(f"--ranks-per-node must be >= 1, got {ranks}")
    if options.cpus_per_task is not None and options.cpus_per_task < 1:
        raise ConfigError(f"--cpus-per-task must be >= 1, got {options.cpus_per_task}")
    if options.requeue_on_failure < 0:
        raise ConfigError(f"--requeue-on-failure must be >= 0, got {options.requeue_on_failure}")
    if options.max_restarts < 0:
        raise ConfigError(f"--max-restarts must be >= 0, got {options.max_restarts}")
    if options.signal_seconds is not None and options.signal_seconds < 0:
        raise ConfigError(f"--signal-seconds must be >= 0 (0: no warning), got {options.signal_seconds}")
    if options.max_parallel is not None and options.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1, got {options.max_parallel}")
    return Layout(nodes=options.nodes, gpus_per_node=gpus, ranks_per_node=ranks)


@dataclass(frozen=True)
class Resources:
    """What each node asks SLURM for, after the per-GPU defaults; None = not asked (SLURM's default)."""

    cpus_per_task: int | None
    mem: str | None
    exclusive: bool


_MEMORY = re.compile(r"^(\d+)([KMGT]?)$")


def resolve_resources(options: JobOptions, layout: Layout) -> Resources:
    """Per-node CPUs and memory: explicit options win, then --exclusive, then the per-GPU defaults.

    A GPU job that asks for neither gets one CPU per node and the partition's default memory, which
    starves data loading and can kill rank 0 while it reads a checkpoint; CPU jobs keep SLURM's defaults.
    """
    if options.cpus_per_gpu < 1:
        raise ConfigError(f"--cpus-per-gpu must be >= 1, got {options.cpus_per_gpu}")
    match = _MEMORY.match(options.mem_per_gpu.strip().upper())
    if match is None:
        raise ConfigError(f"--mem-per-gpu {options.mem_per_gpu!r}: "
                          "expected a whole number with an optional K, M, G or T unit, e.g. 64G")
    cpus, mem = options.cpus_per_task, options.mem
    if options.exclusive:
        # --mem=0 is SLURM's "all the memory of each node"; the CPUs are then all of the node's, and the
        # launcher reads their number from SLURM_CPUS_ON_NODE.
        return Resources(cpus_per_task=cpus, mem=mem or "0", exclusive=True)
    if layout.gpus_per_node > 0:
        cpus = cpus if cpus is not None else options.cpus_per_gpu * layout.gpus_per_node
        mem = mem if mem is not None else f"{int(match.group(1)) * layout.gpus_per_node}{match.group(2)}"
    return Resources(cpus_per_task=cpus, mem=mem, exclusive=False)


__all__ = ["JobOptions", "Layout", "Resources", "resolve_layout", "resolve_resources"]
