"""The trainer with every model.reference_compat switch on (1 rank, debug T5, ZeRO-2): the reconstruction
term is divided by recon_mean_length, freezing the decoder also freezes the shared embedding, and the
reference's denoising (ids/mask swap) runs through real steps."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from seq2vae.config import ConfigError
from seq2vae.train.config import load_train_config

COMPAT = [
    "model.injection=prefix", "model.pooling=max", "model.reference_compat.prefix_reshape=true",
    "model.reference_compat.pool_padding=true", "model.reference_compat.denoise=true",
    "model.reference_compat.recon_mean_length=64", "model.reference_compat.freeze_shared_embedding=true",
]


@pytest.mark.slow
def test_a_run_in_full_compat_mode(data_overrides, launch, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, *launch.train_args(
        launch.configs / "debug-zero2.yaml", *data_overrides, f"run_dir={run_dir}", *COMPAT,
        "phases.0.steps=2", "phases.0.masking_rate=0", "phases.1.steps=2", "validation.every_steps=0",
        "validation.max_batches=1", "validation.num_reconstructions=0",
    )]
    done = subprocess.run(command, env=launch.env(), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, launch.tail(done)
    assert "frozen: decoder, embeddings" in done.stdout + done.stderr  # the tied LM head takes the embedding along
    metrics = launch.metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics[:2]:  # phase 1, beta 0: the loss is the reconstruction averaged over 64 positions
        assert m["train/loss"] == pytest.approx(m["train/recon"] / 64, rel=1e-5)
    assert all(math.isfinite(m["train/recon"]) for m in metrics)


def test_reference_denoising_refuses_a_masking_rate():
    with pytest.raises(ConfigError, match="phases.0.masking_rate.*reference_compat.denoise"):
        load_train_config(None, ["model.reference_compat.denoise=true", "phases.0.masking_rate=0.1", "data.train=x"])
