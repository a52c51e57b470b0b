"""One fp32 rank runs no ZeRO machinery unless asked (`deepspeed: auto`, issue 21): real one-rank runs.

Stage 0 with the step guard (train/guarded_step.py) computes what ZeRO-2 computes. A checkpoint of one
layout is not resumed by an engine of another (auto on two ranks is ZeRO-2): refused before DeepSpeed
reads it, naming both and what to do. bf16 at stage 1 is DeepSpeed's BF16_Optimizer, whose checkpoints
`consolidate.py` reads (DeepSpeed's zero_to_fp32 refuses them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one-rank and two-rank training runs

STEPS = ["phases.0.steps=3", "phases.1.steps=3", "checkpoint.every_steps=100", "validation.every_steps=0",
         "validation.max_batches=1", "resume=never"]


def _train(launch, data_overrides, run_dir: Path, *overrides: str):
    done = launch.seq2vae("train", "--config", str(launch.configs / "debug-zero2.yaml"), *data_overrides,
                          f"run_dir={run_dir}", *STEPS, *overrides)
    assert done.returncode == 0, launch.tail(done)
    return launch.metrics(run_dir)


def _manifest(run_dir: Path) -> dict:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return json.loads((run_dir / "checkpoints" / latest / "manifest.json").read_text())


def test_fp32_auto_is_stage_zero_and_computes_what_zero2_computes(launch, data_overrides, tmp_path):
    # Two micro-batches a step (the debug config's micro batch is 8): accumulation is the engine's too.
    single = _train(launch, data_overrides, tmp_path / "auto", "deepspeed=auto", "data.global_batch_size=16")
    assert json.loads((tmp_path / "auto" / "ds_config.json").read_text())["zero_optimization"] == {"stage": 0}
    assert {key: _manifest(tmp_path / "auto")[key] for key in ("zero_stage", "optimizer")} == {
        "zero_stage": 0, "optimizer": "GuardedOptimizer"}
    zero2 = _train(launch, data_overrides, tmp_path / "zero2", "deepspeed=zero2", "data.global_batch_size=16")
    assert json.loads((tmp_path / "auto" / "ds_config.json").read_text())["gradient_accumulation_steps"] == 2
    assert _manifest(tmp_path / "zero2")["optimizer"] == "DeepSpeedZeroOptimizer"
    assert [m["step"] for m in single] == [m["step"] for m in zero2] == list(range(1, 7))
    for key in ("train/loss", "train/recon", "train/kl", "train/grad_norm", "train/lr"):
        ours, theirs = [m[key] for m in single], [m[key] for m in zero2]
        # Only the order of the norm's sums differs (per tensor, then over tensors; ZeRO over a flat buffer).
        assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(ours, theirs)), (key, ours, theirs)
    assert single[-1]["train/loss"] != single[0]["train/loss"]  # it trained

    # The same run directory on two ranks: auto is ZeRO-2 there, which cannot read stage 0's files.
    before = (tmp_path / "auto" / "metrics.jsonl").read_text()
    resumed = launch.run(launch.train_args(launch.configs / "debug-zero2.yaml", *data_overrides,
                                           f"run_dir={tmp_path / 'auto'}", *STEPS[:-1], "phases.1.steps=5",
                                           "deepspeed=auto", "data.global_batch_size=16", "resume=auto"))
    message = launch.tail(resumed)
    assert resumed.returncode != 0 and "exitcode  : 2" in resumed.stderr, message  # our user error, not a crash
    assert "written at ZeRO stage 0 (GuardedOptimizer)" in message and "stage 2 (DeepSpeedZeroOptimizer)" in message
    assert f"model.init_from={tmp_path / 'auto'}" in message, message
    assert (tmp_path / "auto" / "metrics.jsonl").read_text() == before  # nothing written


def test_bf16_zero1_is_deepspeeds_bf16_optimizer_and_exports(launch, data_overrides, tmp_path):
    import torch

    from seq2vae.checkpoint.export import main as export_main
    from seq2vae.model import Seq2SeqVAE

    run_dir = tmp_path / "bf16"
    metrics = _train(launch, data_overrides, run_dir, "deepspeed=zero1", "precision=bf16")
    assert all(math.isfinite(m["train/loss"]) for m in metrics) and len(metrics) == 6
    manifest = _manifest(run_dir)
    assert (manifest["zero_stage"], manifest["optimizer"]) == (1, "BF16_Optimizer")
    assert any(name.startswith("bf16_zero_pp_rank_0") for name in manifest["files"]), manifest
    assert export_main([str(run_dir), "--output", str(tmp_path / "exported")]) == 0
    vae = Seq2SeqVAE.from_pretrained(tmp_path / "exported")
    assert all(torch.isfinite(p).all() for p in vae.parameters())
