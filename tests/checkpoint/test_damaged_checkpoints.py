"""Damaged checkpoints with real ranks: 2-process torchrun ZeRO-2 runs on CPU (gloo).

One run stops at step 6 (checkpoints step 5 and step 6); rank 1's optimizer shard of step 6 is then
truncated. An explicit resume from step 6 must fail naming the file; `--resume auto` must warn naming
it, fall back to step 5 and complete the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOTAL_STEPS = 12  # configs/debug-zero2.yaml

pytestmark = pytest.mark.slow  # 2-rank torchrun runs resumed from damaged checkpoints


def test_damaged_latest_checkpoint_with_real_ranks(data_overrides, launch, tmp_path):
    from seq2vae.checkpoint.durability import checkpoint_problems

    config = CONFIGS / "debug-zero2.yaml"
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    first = launch.run(launch.train_args(config, *data_overrides, f"run_dir={run_dir}", "stop_at_step=6"))
    assert first.returncode == 0, launch.tail(first)
    step5, step6 = checkpoints / "step_00000005", checkpoints / "step_00000006"
    assert checkpoint_problems(step5) == [] and checkpoint_problems(step6) == []
    shard = step6 / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    assert shard.is_file(), sorted(p.name for p in step6.iterdir())
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a copy cut short

    explicit = launch.run(launch.train_args(config, *data_overrides, f"run_dir={run_dir}", "--resume", str(step6)))
    output = explicit.stdout + explicit.stderr
    assert explicit.returncode != 0
    assert f"{shard}: " in output and "the manifest says" in output, launch.tail(explicit)
    # One message from rank 0, not a Python traceback (torchrun still prints its own summary).
    assert explicit.returncode == 2 or "exitcode  : 2" in output, launch.tail(explicit)
    assert output.count(f"seq2vae train: error: checkpoint {step6} cannot be loaded") == 1, launch.tail(explicit)
    assert "durability.py" not in output, launch.tail(explicit)

    auto = launch.run(launch.train_args(config, *data_overrides, f"run_dir={run_dir}", "--resume", "auto"))
    output = auto.stdout + auto.stderr
    assert auto.returncode == 0, launch.tail(auto)
    assert f"skipping damaged checkpoint {step6}" in output and str(shard) in output, launch.tail(auto)
    assert f"resumed from {step5} at step 5" in output, launch.tail(auto)
    metrics = launch.metrics(run_dir)
    assert metrics[-1]["step"] == TOTAL_STEPS and [m["step"] for m in metrics[-7:]] == list(range(6, TOTAL_STEPS + 1))
    assert (checkpoints / "latest").read_text().strip() == f"step_{TOTAL_STEPS:08d}"
    # The damaged step 6 was moved aside (kept for inspection, not counted by keep_last=2).
    kept = sorted(p.name for p in checkpoints.glob("step_*"))
    assert kept == ["step_00000010", f"step_{TOTAL_STEPS:08d}"]
    assert (checkpoints / "damaged-step_00000006" / shard.name).is_file()
    assert all(checkpoint_problems(checkpoints / name) == [] for name in kept)
