"""Checkpoints: DeepSpeed shards per rank, our training state in `client_state`, an atomic `latest`.

Layout: RUN_DIR/checkpoints/step_XXXXXXXX/ (DeepSpeed's files) and RUN_DIR/checkpoints/latest, a
text file naming the newest complete checkpoint. `latest` is written by rank 0 only after a barrier
proves every rank finished writing its shard, and by rename, so a crash mid-save never points
`--resume auto` at a partial checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation.distributed import gather_objects
from .distributed import World, barrier

LATEST_FILE = "latest"
TAG_PREFIX = "step_"


def checkpoint_tag(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None when there is none."""
    pointer = Path(checkpoints_dir) / LATEST_FILE
    if not pointer.is_file():
        return None
    path = Path(checkpoints_dir) / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {path.name!r}, which does not exist")
    return path


def resolve_resume(resume: str, checkpoints_dir: Path) -> Path | None:
    """`resume` setting -> the checkpoint to load: auto (latest if any), never, or an explicit path."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(checkpoints_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"key 'resume': checkpoint directory {resume!r} does not exist")
    return path


def capture_rng(noise_generator: torch.Generator) -> dict[str, Any]:
    """This rank's random states: python, numpy, torch (CPU, CUDA) and the noising generator."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "noise": noise_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], noise_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _prune(checkpoints_dir: Path, keep_last: int, keep: Path) -> None:
    tags = sorted(p for p in checkpoints_dir.glob(f"{TAG_PREFIX}*") if p.is_dir())
    for path in tags[:-keep_last]:
        if path != keep:
            shutil.rmtree(path)


def save_checkpoint(
    engine,
    checkpoints_dir: Path,
    step: int,
    shared_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep_last: int,
    world: World,
) -> Path:
    """Saves on ALL ranks (a collective). `rank_state` is gathered so each rank can restore its own.

    Args:
        shared_state: identical on every rank (step, phase, skip counters).
        rank_state: this rank's data-loader position and RNG states.
    Returns:
        the checkpoint directory.
    """
    tag = checkpoint_tag(step)
    client_state = {**shared_state, "world_size": world.size, "ranks": gather_objects(rank_state)}
    engine.save_checkpoint(str(checkpoints_dir), tag=tag, client_state=client_state, save_latest=False)
    barrier()  # every rank has written its shard
    path = checkpoints_dir / tag
    if world.is_main:
        staging = checkpoints_dir / f".{LATEST_FILE}.tmp"
        staging.write_text(tag + "\n")
        os.replace(staging, checkpoints_dir / LATEST_FILE)
        _prune(checkpoints_dir, keep_last, keep=path)
    barrier()  # nobody races ahead while rank 0 prunes
    return path


def load_checkpoint(engine, path: Path, world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads weights, optimizer state and client state on ALL ranks.

    Returns:
        (shared state, this rank's state).
    """
    load_path, client_state = engine.load_checkpoint(
        str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if load_path is None:  # DeepSpeed returns (None, None) instead of raising
        raise RuntimeError(f"DeepSpeed loaded nothing from checkpoint {path}")
    if client_state.get("world_size") != world.size:
        raise RuntimeError(
            f"checkpoint {path} was written by {client_state.get('world_size')} ranks, this job has "
            f"{world.size}: resume with the same number of ranks (data positions are per rank)"
        )
    ranks = client_state.pop("ranks")
    return client_state, ranks[world.rank]
