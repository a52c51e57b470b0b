"""configs/paper: the reference study's config and grid load, every grid row validates, and a phase
with 0 steps (the grid's "vanilla" rows) is skipped rather than rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2vae.config import ConfigError
from seq2vae.slurm.sweep import read_sweep_table
from seq2vae.train.config import load_train_config
from seq2vae.train.trainer import phase_at

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"


@pytest.fixture
def base_config() -> Path:
    return PAPER / "base.yaml"


def test_base_is_the_reference_setup(base_config):
    config = load_train_config(base_config)
    model, (autoencoder, vae) = config.model, config.phases
    assert (model.backbone, model.latent_dim, model.pooling, model.injection) == ("t5-small", 32, "max", "prefix")
    assert autoencoder.beta.value == 0 and autoencoder.deletion_rate > 0 and "decoder" in autoencoder.freeze
    assert vae.free_bits > 0 and vae.free_bits_mode == "dimension" and vae.beta.kind == "linear"
    # model_t5.py:189 AdamW(lr=1e-4) with torch's weight decay 0.01, no scheduler, no clipping, fp32;
    # 15 + 10 epochs of ceil(100,000 / 128) = 782 steps at the stated global batch of 128.
    optim = config.optim
    assert (optim.lr, optim.weight_decay, optim.schedule, optim.gradient_clipping) == (1e-4, 0.01, "constant", 0.0)
    assert config.precision == "fp32" and config.data.global_batch_size == 128
    assert (autoencoder.steps, vae.steps) == (15 * 782, 10 * 782) and vae.beta.value == pytest.approx(0.1)
    assert not model.reference_compat.any()


def test_every_grid_row_validates_and_covers_the_reference_grid(base_config):
    rows = [dict(cell.split("=", 1) for cell in row) for row in read_sweep_table(PAPER / "grid.tsv")]
    configs = [load_train_config(base_config, [f"{k}={v}" for k, v in row.items()]) for row in rows]
    assert {c.phases[1].free_bits for c in configs} == {0.0, 0.5, 3.0, 6.0}
    assert {c.phases[1].deletion_rate for c in configs} == {0.0, 0.15, 0.4}
    assert {tuple(c.phases[0].freeze) for c in configs if c.phases[0].steps} == {("decoder", "latent")}
    phase_2 = [c for c in configs if c.phases[0].steps == 0 and c.model.init_from]
    vanilla = [c for c in configs if c.phases[0].steps == 0 and not c.model.init_from]
    assert len(phase_2) == 9 and len(vanilla) == 3 and all(c.total_steps == c.phases[1].steps for c in vanilla)
    assert {c.model.backbone for c in configs} == {"t5-small", "t5-base"}
    # The reference keeps phase 1's best val_recon_loss checkpoint and phase 2's last (finetune.py:143-148, :202-207).
    assert [c.checkpoint.keep_best for c in configs] == [c.phases[1].steps == 0 for c in configs]
    assert {c.checkpoint.best_metric for c in configs} == {"recon_nll"}


def test_small_study_loads_and_its_grid_validates():
    rows = read_sweep_table(PAPER / "small-grid.tsv")
    configs = [load_train_config(PAPER / "small.yaml", row) for row in rows]
    assert configs[0].phases[0].steps == 0 and configs[0].phases[1].free_bits == 0
    assert any(c.phases[0].steps > 0 and c.phases[1].free_bits > 0 for c in configs)


def test_rate_grid_aims_phase_2_at_increasing_kl_targets_without_free_bits():
    configs = [load_train_config(PAPER / "small.yaml", row) for row in read_sweep_table(PAPER / "rate-grid.tsv")]
    small = load_train_config(PAPER / "small.yaml")
    targets = [c.phases[1].beta.target_kl for c in configs]
    assert targets == sorted(targets) and len(targets) >= 5 and min(targets) < 32 < max(targets)  # both sides of H(x)
    assert all(c.phases[1].beta.kind == "kl_target" and c.phases[1].free_bits == 0 for c in configs)
    assert all(c.phases[0] == small.phases[0] for c in configs)  # phase 1 as in small.yaml


def test_a_zero_step_phase_is_skipped_and_all_zero_is_refused():
    config = load_train_config(PAPER / "small.yaml", ["phases.0.steps=0", "phases.1.steps=5"])
    assert [phase_at(config.phases, step) for step in (0, 4)] == [(1, 0), (1, 4)]
    with pytest.raises(ConfigError, match="key 'phases'.*0 steps"):
        load_train_config(PAPER / "small.yaml", ["phases.0.steps=0", "phases.1.steps=0"])
