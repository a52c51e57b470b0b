"""Checkpoints: DeepSpeed shards per rank, our training state in `client_state`, an atomic `latest`.

Layout: RUN_DIR/checkpoints/step_XXXXXXXX/ (DeepSpeed's files plus `manifest.json`) and
RUN_DIR/checkpoints/latest, a text file naming the newest complete checkpoint; with
`checkpoint.keep_best`, RUN_DIR/checkpoints/best names the checkpoint of the best validation so far
(written the same way, only after that checkpoint is sealed, and never pruned by `keep_last`). A save is: every rank
writes its shard; every rank fsyncs and checksums its files; rank 0 writes the manifest (sizes and
CRC-32s) atomically; only then rank 0 moves `latest` (temporary file, fsync, rename, fsync of the
directory). A crash or power loss at any point leaves `latest` on a complete checkpoint.

Resuming verifies the chosen checkpoint against its manifest (`durability.py`). `--resume auto` falls
back to the newest older complete checkpoint when the latest is damaged, with a warning naming the
damaged files; an explicit `--resume PATH` to a damaged checkpoint fails naming them. `keep_last` >= 2
(checked in the config) so one fallback always exists.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import read_yaml_mapping
from ..distributed import World, barrier, gather_objects
from ..errors import UserError
from ..model.config import VAEConfig
from .durability import DamagedCheckpointError, atomic_write_text, checkpoint_problems, read_manifest, seal_checkpoint
from .reshard import check_reshardable, restore_zero3_groups, saved_world_size, universal_checkpoint

LATEST_FILE = "latest"
BEST_FILE = "best"  # the best-validation checkpoint (checkpoint.keep_best)
POINTERS = (LATEST_FILE, BEST_FILE)
# The last save's duration, from which `seq2vae slurm render` derives the warning lead before the time
# limit (seq2vae.slurm.signal_lead reads it).
SAVE_TIMING_FILE = "save_timing.json"
TAG_PREFIX = "step_"
DAMAGED_PREFIX = "damaged-"
RUN_CONFIG_FILE = "config.yaml"  # the resolved training config every run directory holds


def checkpoint_tag(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def pointed_checkpoint(checkpoints_dir: str | Path, name: str) -> Path | None:
    """The checkpoint the pointer file `name` ('latest' or 'best') names, or None when there is no such file."""
    pointer = Path(checkpoints_dir) / name
    if not pointer.is_file():
        return None
    path = Path(checkpoints_dir) / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {path.name!r}, which does not exist")
    return path


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The newest complete checkpoint directory, or None when there is none."""
    return pointed_checkpoint(checkpoints_dir, LATEST_FILE)


def best_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The best-validation checkpoint (`checkpoint.keep_best`), or None when the run kept none."""
    return pointed_checkpoint(checkpoints_dir, BEST_FILE)


def named_checkpoint(checkpoints_dir: str | Path, name: str) -> Path:
    """'latest', 'best' or a tag such as 'step_00001000' -> that checkpoint directory.

    Raises FileNotFoundError naming what is missing and what is there.
    """
    checkpoints_dir = Path(checkpoints_dir)
    path = pointed_checkpoint(checkpoints_dir, name) if name in POINTERS else checkpoints_dir / name
    if path is None or not path.is_dir():
        available = ", ".join(sorted(p.name for p in checkpoints_dir.glob(f"{TAG_PREFIX}*"))) or "none"
        what = f"no checkpoints/{name} file" if name in POINTERS else f"checkpoint {name!r} not found"
        raise FileNotFoundError(f"{checkpoints_dir}: {what}; available: {available}")
    return path


def set_best_pointer(checkpoints_dir: Path, tag: str | None) -> None:
    """Points `best` at checkpoint `tag` (atomically), or removes it for None (rank 0 only)."""
    pointer = Path(checkpoints_dir) / BEST_FILE
    if tag is None:
        pointer.unlink(missing_ok=True)
    elif not pointer.is_file() or pointer.read_text().strip() != tag:
        atomic_write_text(pointer, tag + "\n")


def run_model_config(run_dir: Path) -> VAEConfig:
    """The model section of a training run directory's resolved config (RUN_DIR/config.yaml)."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    return VAEConfig.from_dict(read_yaml_mapping(path).get("model", {}), source=str(path))


def _step_of(path: Path) -> int:
    return int(path.name[len(TAG_PREFIX):]) if path.name[len(TAG_PREFIX):].isdigit() else -1


def _verified(path: Path, world: World, look_only: bool) -> Path:
    problems = checkpoint_problems(path, world.rank, world.size, checksums=not look_only)
    if problems:
        raise DamagedCheckpointError(f"checkpoint {path} cannot be loaded:\n  " + "\n  ".join(problems))
    return path


def _quarantined(path: Path) -> Path:
    return path.with_name(f"{DAMAGED_PREFIX}{path.name}")


def _quarantine(paths: list[Path]) -> None:
    """Renames skipped checkpoints out of the `step_*` namespace: kept for inspection, never chosen again,
    and not counted by `keep_last` (which would otherwise keep a damaged one instead of a fallback)."""
    for path in paths:
        if path.is_dir():
            target = _quarantined(path)
            if target.exists():
                shutil.rmtree(target)
            os.replace(path, target)


def _newest_intact(checkpoints_dir: Path, world: World, look_only: bool) -> Path | None:
    """`latest` if intact, else the newest older complete checkpoint that verifies (ALL ranks).

    Every skipped checkpoint is reported on rank 0 with the files that made it unusable, and moved
    aside, unless `look_only` (see `resolve_resume`).
    """
    pointer = checkpoints_dir / LATEST_FILE
    # Rank 0's view decides, so every rank walks the same candidates through the same collectives.
    named = gather_objects(pointer.read_text().strip() if pointer.is_file() else None)[0]
    if named is None:
        return None
    tags = gather_objects(sorted((p.name for p in checkpoints_dir.glob(f"{TAG_PREFIX}*") if p.is_dir()), reverse=True))[0]
    latest_step = _step_of(Path(named))
    candidates = [named] + [tag for tag in tags if tag != named and _step_of(Path(tag)) < latest_step]
    skipped: list[Path] = []
    for tag in candidates:
        path = checkpoints_dir / tag
        problems = checkpoint_problems(path, world.rank, world.size, checksums=not look_only)
        if not problems:
            if not look_only and world.is_main:
                _quarantine(skipped)
            return path
        skipped.append(path)
        if not look_only and world.is_main:
            print(
                f"WARNING: skipping damaged checkpoint {path}:\n  " + "\n  ".join(problems)
                + f"\n  falling back to the previous complete checkpoint; it is kept as {_quarantined(path).name}",
                flush=True,
            )
    state = "which does not exist" if not (checkpoints_dir / named).is_dir() else "which is damaged"
    raise DamagedCheckpointError(
        f"{pointer} names {named!r}, {state}, and no older checkpoint in {checkpoints_dir} is intact "
        "(see the warnings above); resume from a copy, or start over with --resume never"
    )


def resolve_resume(resume: str, checkpoints_dir: Path, world: World | None = None, look_only: bool = False) -> Path | None:
    """`resume` setting -> the verified checkpoint to load: auto (latest intact, else an older one with a
    warning), never, or an explicit path (DamagedCheckpointError naming the damaged files).

    A collective when `world` has several ranks: call it on all of them. `look_only` is the check each
    rank runs alone before the world starts: manifests, presence and sizes, no checksums (the ranks
    verify those together, each its share, when the run resolves it again), and nothing printed or
    moved aside (one rank moving a damaged checkpoint would pull it from under another still looking).
    """
    world = world or World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    if resume == "never":
        return None
    if resume == "auto":
        return _newest_intact(checkpoints_dir, world, look_only)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"key 'resume': checkpoint directory {resume!r} does not exist")
    return _verified(path, world, look_only)


def capture_rng(noise_generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """This rank's random states: python, numpy, torch CPU, its own CUDA device and the noising generator.

    Only `device`'s CUDA state: each rank draws on its own GPU, and `get_rng_state_all` would initialise
    a CUDA context on every visible GPU of the node from every rank.
    """
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "noise": noise_generator.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], noise_generator: torch.Generator, device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise"])
    if "cuda" in state and device.type == "cuda":
        cuda_state = state["cuda"]
        if isinstance(cuda_state, (list, tuple)):  # checkpoints before 2026-12 held every device's state
            cuda_state = cuda_state[device.index or 0]
        torch.cuda.set_rng_state(cuda_state, device)


def _prune(checkpoints_dir: Path, keep_last: int, keep: Path) -> None:
    """Deletes all but the `keep_last` newest checkpoints, never `keep` nor the one `best` names."""
    best = checkpoints_dir / BEST_FILE
    protected = {keep, checkpoints_dir / best.read_text().strip()} if best.is_file() else {keep}
    tags = sorted(p for p in checkpoints_dir.glob(f"{TAG_PREFIX}*") if p.is_dir())
    for path in tags[:-keep_last]:
        if path not in protected:
            shutil.rmtree(path)


@dataclass
class PendingCheckpoint:
    """A checkpoint whose files are still being written (asynchronous save): not complete, not `latest`."""

    path: Path
    step: int
    started: float  # time.perf_counter() when the save began
    step_seconds: float
    best: bool = False  # name it `best` too once sealed (its validation improved on the best so far)


class CheckpointLayoutError(UserError, RuntimeError):
    """A checkpoint written by an engine of another ZeRO stage or optimizer than the one resuming it."""


def engine_layout(engine) -> dict[str, Any]:
    """What decides a checkpoint's file layout: the ZeRO stage and the optimizer wrapping AdamW
    (DeepSpeedZeroOptimizer, DeepSpeedZeroOptimizer_Stage3, BF16_Optimizer, or stage 0's GuardedOptimizer)."""
    return {"zero_stage": engine.zero_optimization_stage(), "optimizer": type(engine.optimizer).__name__}


def check_same_layout(checkpoint: Path, engine) -> None:
    """Raises CheckpointLayoutError when `checkpoint` was written by an engine of another layout: DeepSpeed
    would fail on a missing file or key without saying why (e.g. a one-rank `deepspeed: auto` run, stage
    0, resumed on two ranks, where auto is ZeRO-2). Checkpoints from before the manifest recorded it pass."""
    manifest = read_manifest(checkpoint)
    here = engine_layout(engine)
    saved = {key: manifest[key] for key in here if key in manifest}
    if saved and saved != here:
        raise CheckpointLayoutError(
            f"checkpoint {checkpoint} was written at ZeRO stage {saved.get('zero_stage')} ({saved.get('optimizer')}) and this "
            f"run builds stage {here['zero_stage']} ({here['optimizer']}): resume with the `deepspeed` and `precision` "
            f"the run was started with (its config.yaml; `deepspeed: auto` depends on the number of ranks), or start a "
            f"new run from its weights with model.init_from={checkpoint.parent.parent}"
        )


def save_checkpoint(
    engine,
    checkpoints_dir: Path,
    step: int,
    shared_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep_last: int,
    world: World,
    step_seconds: float = 0.0,
    best: bool = False,
) -> Path:
    """Saves on ALL ranks (a collective). `rank_state` is gathered so each rank can restore its own.

    Args:
        shared_state: identical on every rank (step, phase, skip counters, best validation so far).
        rank_state: this rank's data-loader position and RNG states.
        step_seconds: the last optimizer step's time, recorded with the save's own (SAVE_TIMING_FILE).
        best: also name it `best` (after `latest`, once sealed).
    Returns:
        the checkpoint directory, complete and named by `latest`.
    """
    pending = start_checkpoint(engine, checkpoints_dir, step, shared_state, rank_state, world, step_seconds, best)
    return finish_checkpoint(engine, pending, checkpoints_dir, keep_last, world)


def start_checkpoint(
    engine,
    checkpoints_dir: Path,
    step: int,
    shared_state: dict[str, Any],
    rank_state: dict[str, Any],
    world: World,
    step_seconds: float = 0.0,
    best: bool = False,
) -> PendingCheckpoint:
    """Hands every rank's files to the engine's checkpoint engine (ALL ranks). With a
    BackgroundCheckpointEngine they are still being written on return; `finish_checkpoint` completes them."""
    started = time.perf_counter()
    tag = checkpoint_tag(step)
    path = checkpoints_dir / tag
    client_state = {**shared_state, "world_size": world.size, "ranks": gather_objects(rank_state)}
    if world.is_main and path.exists():
        # Left by a run that fell back past it (damaged) or died mid-save: its stale manifest must not
        # vouch for the new files while they are being written.
        shutil.rmtree(path)
    barrier()
    engine.save_checkpoint(str(checkpoints_dir), tag=tag, client_state=client_state, save_latest=False)
    return PendingCheckpoint(path, step, started, step_seconds, best)


def finish_checkpoint(engine, pending: PendingCheckpoint, checkpoints_dir: Path, keep_last: int, world: World) -> Path:
    """Waits for this rank's writes, seals the checkpoint, then moves `latest` (and `best`) to it (ALL ranks)."""
    wait = getattr(engine.checkpoint_engine, "wait", None)
    if wait is not None:
        wait()
    barrier()  # every rank has written its shard
    # fsync + manifest: the checkpoint is now complete
    seal_checkpoint(pending.path, world.rank, world.size, engine_layout(engine))
    if world.is_main:
        atomic_write_text(checkpoints_dir / LATEST_FILE, pending.path.name + "\n")
        if pending.best:  # before pruning, which protects what `best` names
            set_best_pointer(checkpoints_dir, pending.path.name)
        # Rank 0 waited for every rank at each barrier: its wall time is the slowest rank's save (for an
        # asynchronous save, an upper bound: it includes the steps trained while the files were written).
        timing = {
            "step": pending.step,
            "save_seconds": round(time.perf_counter() - pending.started, 3),
            "step_seconds": round(pending.step_seconds, 3),
        }
        atomic_write_text(checkpoints_dir / SAVE_TIMING_FILE, json.dumps(timing) + "\n")
        _prune(checkpoints_dir, keep_last, keep=pending.path)
    barrier()  # nobody races ahead while rank 0 prunes
    return pending.path


def load_checkpoint(engine, path: Path, world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads weights, optimizer state and client state on ALL ranks, on the checkpoint's world size or,
    for ZeRO-1/2/3 without offload, another one (through a universal checkpoint, see `reshard.py`).

    Returns:
        (shared state, this rank's state). On a new world size this rank's state has the data position
        (identical on every rank; the loader re-plans it) and no "rng" (the old ranks' streams do not
        map onto the new ranks).
    """
    saved_world = saved_world_size(path)
    # Ours before DeepSpeed's: its ZeRORuntimeException would not say what to do.
    offload = any(
        getattr(getattr(settings, "device", None), "value", "none") != "none"
        for settings in (engine.zero_offload_optimizer(), engine.zero_offload_param())
    )
    check_same_layout(path, engine)
    check_reshardable(path, world, engine.zero_optimization_stage(), offload)
    resharding = saved_world != world.size
    if resharding:
        universal = universal_checkpoint(path, world)
        engine._config.load_universal_checkpoint = True  # the engine reads the flag at load time only
        try:
            load_path, client_state = engine.load_checkpoint(
                str(universal.parent), tag=universal.name, load_optimizer_states=True, load_lr_scheduler_states=False
            )
        finally:
            engine._config.load_universal_checkpoint = False
        if load_path is not None and engine.zero_optimization_stage() == 3:
            restore_zero3_groups(engine, universal)
    else:
        load_path, client_state = engine.load_checkpoint(
            str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=False
        )
    if load_path is None:  # DeepSpeed returns (None, None) instead of raising
        raise RuntimeError(f"DeepSpeed loaded nothing from checkpoint {path}")
    if client_state.get("world_size") != saved_world:
        raise RuntimeError(f"checkpoint {path}: its manifest and its client state disagree on the world size")
    ranks = client_state.pop("ranks")
    if resharding:
        if world.is_main:
            print(f"resharded checkpoint {path} from {saved_world} to {world.size} ranks", flush=True)
        return client_state, {"data": ranks[0]["data"]}
    return client_state, ranks[world.rank]
