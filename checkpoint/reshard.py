"""Resuming on a different number of ranks: DeepSpeed universal checkpoints, converted on demand.

A ZeRO checkpoint partitions the optimizer state (and, under ZeRO-3, the weights) by rank, so
DeepSpeed refuses to load it on another world size. Its universal format stores every parameter's
fp32 weights and Adam moments whole, one folder per parameter; `load_universal` re-partitions them
for the new world. The first resume on a new world size converts the checkpoint once, into
CHECKPOINT/universal (rank 0 runs `deepspeed.checkpoint.ds_to_universal` in a subprocess, writes to
a temporary folder and renames it, so a crash leaves no half-converted folder). The other ranks wait
for the folder on the filesystem, not inside a collective, so a long conversion cannot trip the
process group's timeout.

The data position is handled by `seq2vae.data.stream` (the epoch's unread samples are spread over the
new ranks) and the schedule position (step, phase, beta) is world-size independent already.

DeepSpeed 0.19.8's ZeRO-3 universal load loses part of the optimizer state; `restore_zero3_groups`
puts it back after the load (ZeRO-1/2 load it correctly).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..distributed import World
from .durability import read_manifest

UNIVERSAL_DIR = "universal"
FAILED_MARKER = "universal.failed"
POLL_S = 1.0
WAIT_LIMIT_S = 6 * 3600  # conversion reads and writes the whole optimizer state once


class ReshardError(RuntimeError):
    """A checkpoint cannot be resumed on this world size; the message says what to run instead."""


def saved_world_size(checkpoint: Path) -> int:
    return int(read_manifest(checkpoint)["world_size"])


def conversion_command(checkpoint: Path, output: Path) -> list[str]:
    # inject_missing_state: our checkpoints carry no tensor-parallel layout, which is all the
    # "universal_checkpoint_info" the converter asks for (DeepSpeed's Megatron clients write it).
    return [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(checkpoint),
        "--output_folder", str(output), "--num_extract_workers", "1", "--num_merge_workers", "1",
        "--inject_missing_state",
    ]


def check_reshardable(checkpoint: Path, world: World, zero_stage: int, offload: bool) -> None:
    """Raises ReshardError (before any engine or DeepSpeed check) when `checkpoint`, written on another
    world size, cannot be continued here. Checked on CPU: ZeRO-2 and ZeRO-3 (2 -> 1, 1 -> 2) with
    DeepSpeed 0.19.8's torch Adam; offloaded optimizer or parameter state is not verified, so
    it is refused rather than risked."""
    saved = saved_world_size(checkpoint)
    if saved == world.size or (zero_stage in (1, 2, 3) and not offload):
        return
    why = "with ZeRO offload" if offload else f"at ZeRO stage {zero_stage}"
    # Stage 0 writes no ZeRO partitions for zero_to_fp32; init_from reads any layout (consolidate.py).
    instead = (
        f"start a new run from its weights with model.init_from={checkpoint.parent.parent} (the optimizer state is lost)"
        if zero_stage == 0 else
        f"consolidate the weights with `python {checkpoint.parent / 'zero_to_fp32.py'} {checkpoint.parent} OUT "
        f"--tag {checkpoint.name}` (the optimizer state is lost) and start a new run from them"
    )
    raise ReshardError(
        f"checkpoint {checkpoint} was written by {saved} ranks and this job has {world.size}: resuming on another "
        f"world size is supported for ZeRO stages 1-3 without offload, not {why}. Resume on {saved} ranks, or {instead}"
    )


def universal_checkpoint(checkpoint: Path, world: World) -> Path:
    """CHECKPOINT/universal, converting it first if needed (ALL ranks call this; only rank 0 converts)."""
    target = checkpoint / UNIVERSAL_DIR
    failed = checkpoint / FAILED_MARKER
    if world.is_main and not target.is_dir():
        failed.unlink(missing_ok=True)
        staging = checkpoint / f".{UNIVERSAL_DIR}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        print(f"converting {checkpoint} to a universal checkpoint for {world.size} ranks", flush=True)
        done = subprocess.run(conversion_command(checkpoint, staging), capture_output=True, text=True)
        if done.returncode != 0:
            message = (
                f"converting {checkpoint} to a universal checkpoint failed (exit {done.returncode}); ran: "
                f"{' '.join(conversion_command(checkpoint, staging))}\n{(done.stdout + done.stderr)[-3000:]}"
            )
            failed.write_text(message)
            raise ReshardError(message)
        staging.rename(target)
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not target.is_dir():
        if failed.is_file():
            raise ReshardError(failed.read_text())
        if time.monotonic() > deadline:
            raise ReshardError(f"rank 0 did not finish converting {checkpoint} within {WAIT_LIMIT_S} s")
        time.sleep(POLL_S)
    return target


def restore_zero3_groups(engine, universal: Path) -> None:
    """Puts back what DeepSpeed 0.19.8's ZeRO-3 universal load loses (ALL ranks, right after the load).

    `load_hp_checkpoint_state_from_checkpoint_dir_stage3` gives every sub-group sub-group 0's Adam
    step as one shared tensor, which Adam then advances once per sub-group per step (after 6 more
    steps with 5 groups a count of 6 reads 36, and a group frozen for a phase gets the others'
    count), and copies param group 0's settings into every group: each group becomes "embeddings",
    so freezing by name would freeze the wrong groups. The universal checkpoint's optimizer_state.pt
    (the old rank 0's ZeRO-3 optimizer state) still has each sub-group's step and each group's settings.
    """
    saved = torch.load(universal / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)
    saved = saved["optimizer_state_dict"]  # the base optimizer's state_dict: state per sub-group, settings per group
    zero = engine.optimizer
    base = zero.optimizer
    # A state_dict numbers parameters group by group; ZeRO-3's parameters are its flat sub-group partitions.
    flats = [
        flat
        for group_id in range(len(base.param_groups))
        for sub_group_id, flat in enumerate(zero.fp32_partitioned_groups_flat)
        if zero.sub_group_to_group_id[sub_group_id] == group_id
    ]
    for index, flat in enumerate(flats):
        step = saved["state"].get(index, {}).get("step")
        if step is not None:
            base.state[flat]["step"] = step.clone() if torch.is_tensor(step) else step
    for group, saved_group in zip(base.param_groups, saved["param_groups"], strict=True):
        group.update({key: value for key, value in saved_group.items() if key != "params"})
