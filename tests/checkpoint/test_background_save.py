"""Asynchronous checkpoints with real ranks: 2-process torchrun ZeRO-2, ZeRO-3 and stage-0 (`single`,
whose files hold the live module and optimizer state) runs on CPU (gloo).

The same run saves every 3 steps synchronously and asynchronously (files written by a thread while
training goes on, sealed 2 steps later). Training is unchanged, every asynchronous checkpoint is
complete (manifest, checksums) and holds exactly what the synchronous one holds, and a run resumed
from one reproduces the uninterrupted losses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOTAL_STEPS = 12  # configs/debug-zero2.yaml and debug-zero3.yaml
LOSSES = ("train/loss", "train/recon", "train/kl", "train/beta", "train/lr", "train/grad_norm")


def same(a, b, where: str) -> None:
    """Asserts two loaded checkpoint states are identical, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for key in a:
            same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{index}]")
    elif hasattr(a, "shape") and hasattr(a, "dtype"):  # numpy arrays of the RNG states
        assert (a == b).all(), where
    elif hasattr(a, "__dict__") and type(a).__eq__ is object.__eq__:  # e.g. DeepSpeed's loss scaler
        assert type(a) is type(b), where
        same(vars(a), vars(b), where)
    else:
        assert a == b, (where, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3", "single"])
def test_asynchronous_checkpoints_are_sealed_complete_identical_and_resume_bit_exactly(stage, data_overrides, launch, tmp_path):
    from seq2vae.checkpoint.durability import checkpoint_problems

    config = CONFIGS / ("debug-zero2.yaml" if stage == "single" else f"debug-{stage}.yaml")
    common = [*data_overrides, f"deepspeed={stage}", "checkpoint.every_steps=3", "checkpoint.keep_last=10"]
    sync_dir, async_dir, resumed_dir = tmp_path / "sync", tmp_path / "async", tmp_path / "resumed"
    done = launch.run(launch.train_args(config, *common, f"run_dir={sync_dir}"))
    assert done.returncode == 0, launch.tail(done)
    done = launch.run(launch.train_args(
        config, *common, "checkpoint.asynchronous=true", "checkpoint.seal_after_steps=2", f"run_dir={async_dir}"
    ))
    assert done.returncode == 0, launch.tail(done)
    expected, got = launch.metrics(sync_dir), launch.metrics(async_dir)
    for key in LOSSES:
        assert [m[key] for m in got] == [m[key] for m in expected], key

    tags = sorted(path.name for path in (sync_dir / "checkpoints").glob("step_*"))
    assert tags == sorted(path.name for path in (async_dir / "checkpoints").glob("step_*")) and len(tags) >= 4, tags
    assert (async_dir / "checkpoints" / "latest").read_text().strip() == f"step_{TOTAL_STEPS:08d}"
    for tag in tags:
        assert checkpoint_problems(async_dir / "checkpoints" / tag) == [], tag
        files = sorted(path.name for path in (sync_dir / "checkpoints" / tag).glob("*.pt"))
        assert files and files == sorted(path.name for path in (async_dir / "checkpoints" / tag).glob("*.pt"))
        for name in files:
            states = [torch.load(run / "checkpoints" / tag / name, weights_only=False) for run in (sync_dir, async_dir)]
            same(*states, f"{tag}/{name}")

    resumed_from = async_dir / "checkpoints" / "step_00000006"
    resumed = launch.run(launch.train_args(config, *common, f"run_dir={resumed_dir}", "--resume", str(resumed_from)))
    assert resumed.returncode == 0, launch.tail(resumed)
    assert f"resumed from {resumed_from} at step 6" in resumed.stdout + resumed.stderr
    got = launch.metrics(resumed_dir)
    assert [m["step"] for m in got] == list(range(7, TOTAL_STEPS + 1))
    for key in LOSSES:
        assert [m[key] for m in got] == [m[key] for m in expected[6:]], key
