"""Identical starts on every ZeRO stage and world size, and the golden-loss comparison of stages.

`golden_runs` (tests/train/conftest.py): one real 2-rank torchrun run per stage (ZeRO-1, 2, 3) of the
debug T5 through both phases (decoder frozen in phase 1), plus one 1-rank ZeRO-3 start;
tests/checkpoint/initial_weights_probe.py records each run's gathered initial weights before training.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

STAGES = ("zero1", "zero2", "zero3")
GOLDEN_STEPS = 20  # golden_runs (tests/train/conftest.py): 4 steps with the decoder frozen, then 16
RELATIVE_TOLERANCE = 1e-5


@pytest.mark.slow
def test_initial_weights_are_bit_identical_across_stages_and_world_sizes(golden_runs):
    reference = load_file(golden_runs["zero2"] / "initial.safetensors")
    assert any(name.startswith("posterior.") for name in reference) and len(reference) > 40
    for other in ("zero1", "zero3", "zero3-1rank"):
        weights = load_file(golden_runs[other] / "initial.safetensors")
        assert weights.keys() == reference.keys(), other
        differing = [name for name in reference if not torch.equal(weights[name], reference[name])]
        assert not differing, f"{other} starts from other weights than zero2: {differing[:5]}"


@pytest.mark.slow
def test_golden_loss_agrees_across_zero_stages_at_every_step(golden_runs, launch):
    runs = {stage: launch.metrics(golden_runs[stage] / "run") for stage in STAGES}
    for stage, metrics in runs.items():
        assert [m["step"] for m in metrics] == list(range(1, GOLDEN_STEPS + 1)), stage
    losses = [m["train/loss"] for m in runs["zero2"]]
    assert len(set(losses)) == GOLDEN_STEPS, "the loss should change every step"
    for stage in ("zero1", "zero3"):
        for expected, got in zip(runs["zero2"], runs[stage], strict=True):
            for key in ("train/loss", "train/kl", "train/grad_norm"):
                relative = abs(got[key] - expected[key]) / abs(expected[key])
                assert relative < RELATIVE_TOLERANCE, (stage, expected["step"], key, expected[key], got[key])


@pytest.mark.slow
def test_phase_switch_is_inside_the_golden_run(golden_runs):
    """Phase 1 froze the decoder, phase 2 trained it: the comparison covers the switch."""
    config = (golden_runs["zero3"] / "config.yaml").read_text()
    assert "decoder" in config
    phases = [json.loads(line) for line in (golden_runs["zero3"] / "run" / "metrics.jsonl").read_text().splitlines()]
    betas = [m["train/beta"] for m in phases]
    assert set(betas[:4]) == {0.0} and max(betas[4:]) > 0.0


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_initialisation_depends_on_the_seed_alone(kind, tokenizer_dir):
    """Whatever the global generator's state, the same seed gives the same weights; another seed differs."""
    from seq2vae.checkpoint.initial_weights import initialise, reference_backbone_weights
    from seq2vae.model import VAEConfig, build_vae

    config = VAEConfig(backbone=f"debug-{kind}", tokenizer=str(tokenizer_dir), latent_dim=16, injection="both")

    def start(seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)
        vae = build_vae(config)
        initialise(vae, seed, zero3=False, reference=reference_backbone_weights(config, seed))
        return {name: p.detach().clone() for name, p in vae.named_parameters()}

    first, second, other_seed = start(3, 100), start(3, 200), start(4, 100)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["posterior.weight"], other_seed["posterior.weight"])
    assert not torch.equal(first["latent_to_embedding.weight"], other_seed["latent_to_embedding.weight"])
    backbone_names = [name for name in first if name.startswith("backbone.") and first[name].dim() == 2]
    assert not any(torch.equal(first[name], other_seed[name]) for name in backbone_names)
