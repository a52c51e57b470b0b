"""The few questions asked of a live SLURM: does this partition have GPUs, and submit this script (after that job)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..config import ConfigError
from ..errors import UserError


def check_partition_has_gpus(partition: str | None) -> None:
    """Raises ConfigError when `sinfo` reports no GPU GRES on any node of `partition`.

    `partition` None means the default partition. Without `sinfo` (rendering on a laptop) or when it
    fails, nothing can be checked: a note goes to stderr and the request passes.
    """
    if shutil.which("sinfo") is None:
        return
    command = ["sinfo", "--noheader", "--format=%P %G"] + (["--partition", partition] if partition else [])
    try:
        # sinfo retries for a minute when it finds no slurm.conf; a login node answers in well under that.
        result = subprocess.run(command, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        print("seq2vae slurm: could not check the partition's GPUs: sinfo did not answer in 15 s", file=sys.stderr)
        return
    if result.returncode != 0:
        print(f"seq2vae slurm: could not check the partition's GPUs: {result.stderr.strip()}", file=sys.stderr)
        return
    gres_by_partition: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        name, _, gres = line.strip().partition(" ")
        if not name:
            continue
        default = name.endswith("*")  # sinfo marks the default partition with '*'
        if partition is None and not default:
            continue
        gres_by_partition.setdefault(name.rstrip("*"), set()).add(gres.strip())
    for name, gres in gres_by_partition.items():
        if not any("gpu" in entry for entry in gres):
            raise ConfigError(
                f"partition '{name}' is CPU-only (sinfo reports GRES {', '.join(sorted(gres))}), but the "
                "job asks for GPUs: use --device cpu, or a GPU partition with --partition"
            )


class SubmitError(UserError, RuntimeError):
    """sbatch is missing or refused the job (a partition, account or limit to fix); sbatch's words follow."""


def submit(script_path: Path, dependency: str | None = None) -> str:
    """Runs `sbatch --parsable [--dependency=DEPENDENCY] SCRIPT` and returns the job id; raises SubmitError
    with sbatch's message. `dependency` e.g. 'afterok:123' (a sweep's later wave)."""
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch was not found on PATH: submit from a SLURM login node, or render and copy the script")
    command = ["sbatch", "--parsable", *([f"--dependency={dependency}"] if dependency else []), str(script_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SubmitError(f"sbatch {script_path} failed (exit {result.returncode}): {result.stderr.strip()}")
    # --parsable prints "jobid" or "jobid;cluster".
    return result.stdout.strip().split(";")[0]
