"""The planner's verdict on a SLURM training job, for `seq2vae slurm render|submit`.

A job that cannot fit its allocation fails after hours in the queue, often without a traceback (the
kernel's OOM killer); refusing it at render time, with the planner's fix, is cheaper.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import ConfigError
from ..plan import ClusterLayout
from ..train.capacity import plan_training_run
from ..train.config import load_train_config
from .signal_lead import checkpoint_write_seconds

# sbatch --mem units (default megabytes).
_MEM_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_sbatch_mem_gib(mem: str | None) -> float | None:
    """'512G' / '64000M' / '1T' / '64000' (MB) -> GiB; None when not given; ConfigError naming --mem otherwise."""
    if mem is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", mem.strip(), flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"--mem {mem!r}: expected a size such as 512G, 64000M or 1T")
    return float(match.group(1)) * _MEM_UNITS[match.group(2).upper()] / 2**30


def refuse_if_it_cannot_fit(config_path: Path, overrides: list[str], nodes: int, gpus_per_node: int, mem: str | None) -> float:
    """Plans the training config on nodes x gpus_per_node GPUs (80 GiB each; host memory from --mem,
    else the planner's default) and raises ConfigError with the planner's problems when it does not fit.

    Returns the planned seconds of one checkpoint save (its bytes at the assumed write speed per node)."""
    config = load_train_config(config_path, overrides)
    host = parse_sbatch_mem_gib(mem)
    layout = ClusterLayout(nodes, gpus_per_node, **({"host_memory_gib": host} if host else {}))
    try:
        plan = plan_training_run(config, layout)
    except OSError as error:
        raise ConfigError(
            f"{config_path}: key 'model.backbone': cannot read the config of {config.model.backbone!r} to check "
            f"that the job fits ({error}); give a local directory holding its config.json"
        ) from None
    if not plan.fits:
        raise ConfigError(
            f"{config_path}: the job cannot fit {nodes} node(s) x {gpus_per_node} GPU(s) "
            f"(`seq2vae plan` says): " + "; ".join(plan.problems)
        )
    return checkpoint_write_seconds(plan.checkpoint_bytes, nodes)
