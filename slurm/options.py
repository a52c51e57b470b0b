"""What a job asks of the cluster: nodes, ranks, resources, queue, logs, preemption policy.

One `JobOptions` describes the allocation and the launch; it says nothing about training itself
(that is the training config's business). `check_options` rejects impossible requests before
anything reaches `sbatch`.
"""

from __future__ import annotations

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
    cpus_per_task: int | None = doc(None, "CPUs for the one task per node (it hosts all that node's ranks)")
    mem: str | None = doc(None, "memory per node, in sbatch syntax (e.g. 64G); null = the partition default")
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
    signal_seconds: int = doc(
        600, "seconds before the time limit at which SLURM warns the job (USR1) so the trainer can save"
    )
    max_parallel: int | None = doc(None, "sweeps: array tasks running at once (the %N of --array); null = no cap")
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
    if options.max_restarts < 0:
        raise ConfigError(f"--max-restarts must be >= 0, got {options.max_restarts}")
    if options.signal_seconds < 1:
        raise ConfigError(f"--signal-seconds must be >= 1, got {options.signal_seconds}")
    if options.max_parallel is not None and options.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be >= 1, got {options.max_parallel}")
    return Layout(nodes=options.nodes, gpus_per_node=gpus, ranks_per_node=ranks)


__all__ = ["JobOptions", "Layout", "resolve_layout"]
