"""The learned prior: EM recovers a known mixture, round-trips through the model directory, samples at a
temperature, and `seq2vae fit-prior` / `generate --prior` use it on a saved model."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from seq2vae.model.prior import (
    GMM_FILE,
    GaussianMixturePrior,
    StandardNormalPrior,
    fit_gaussian_mixture,
    saved_prior,
)


def _two_clusters(num_points: int = 4000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(num_points // 4, 2, generator=generator) * 0.3 + torch.tensor([4.0, 0.0])
    second = torch.randn(3 * num_points // 4, 2, generator=generator) * 0.5 + torch.tensor([-2.0, 1.0])
    return torch.cat([first, second])


def test_em_recovers_a_known_mixture_and_beats_one_gaussian():
    points = _two_clusters()
    prior = fit_gaussian_mixture(points, 2, generator=torch.Generator().manual_seed(1))
    order = torch.argsort(prior.means[:, 0])  # (-2, 1) first
    assert torch.allclose(prior.means[order], torch.tensor([[-2.0, 1.0], [4.0, 0.0]], dtype=torch.float64), atol=0.05)
    assert torch.allclose(prior.weights[order], torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.02)
    assert torch.allclose(prior.log_variances[order].exp().sqrt(), torch.tensor([[0.5, 0.5], [0.3, 0.3]], dtype=torch.float64),
                          atol=0.03)
    single = fit_gaussian_mixture(points, 1)
    assert prior.record["mean_log_likelihood"] > single.record["mean_log_likelihood"] + 1.0
    assert float(prior.log_prob(points).mean()) == pytest.approx(prior.record["mean_log_likelihood"], abs=1e-4)


def test_log_prob_is_a_density_and_matches_the_standard_normal_for_one_unit_component():
    unit = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 3), torch.zeros(1, 3))
    z = torch.randn(50, 3)
    assert torch.allclose(unit.log_prob(z), StandardNormalPrior(3).log_prob(z), atol=1e-9)
    # Integrates to 1 over a grid (1-D, two components).
    prior = GaussianMixturePrior(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0], [2.0]]), torch.tensor([[0.0], [-1.0]]))
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64)[:, None]
    assert float(prior.log_prob(grid).exp().sum() * (grid[1, 0] - grid[0, 0])) == pytest.approx(1.0, abs=1e-6)


def test_saved_prior_round_trips_and_temperature_scales_the_spread(tmp_path):
    prior = fit_gaussian_mixture(_two_clusters(), 2, generator=torch.Generator().manual_seed(1))
    prior.temperature = 0.5
    prior.save(tmp_path)
    loaded = saved_prior(tmp_path)
    assert loaded is not None and loaded.temperature == 0.5
    assert torch.equal(loaded.means, prior.means) and torch.equal(loaded.log_variances, prior.log_variances)
    assert json.loads((tmp_path / "prior_gmm.json").read_text())["num_components"] == 2
    assert saved_prior(tmp_path / "missing") is None
    one = GaussianMixturePrior(torch.ones(1), torch.zeros(1, 2), torch.zeros(1, 2), {"temperature": 0.5})
    draws = one.sample(20000, torch.Generator().manual_seed(0))
    assert float(draws.std()) == pytest.approx(0.5, abs=0.02)
    assert torch.equal(one.sample(5, torch.Generator().manual_seed(3)), one.sample(5, torch.Generator().manual_seed(3)))


def test_fitting_needs_at_least_one_point_per_component():
    with pytest.raises(ValueError, match="cannot seed 5 components"):
        fit_gaussian_mixture(torch.zeros(3, 2), 5)


def _seq2vae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seq2vae", *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_fit_prior_then_generate_samples_from_it_and_says_so(tiny_t5_dir, tmp_path):
    from seq2vae.data.synthetic import write_jsonl

    model = tmp_path / "model"
    shutil.copytree(tiny_t5_dir, model)
    corpus = write_jsonl(tmp_path / "train.jsonl", 40, seed=0)
    refused = _seq2vae("generate", "--model", str(model), "--sample", "2", "--prior", "gmm")
    assert refused.returncode == 2 and GMM_FILE in refused.stderr and "fit-prior" in refused.stderr
    fitted = _seq2vae("fit-prior", "--model", str(model), "--data", str(corpus), "--components", "4")
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    assert (model / GMM_FILE).is_file() and "4-component" in fitted.stdout
    learned = _seq2vae("generate", "--model", str(model), "--sample", "3", "--max-new-tokens", "5", "--json")
    standard = _seq2vae("generate", "--model", str(model), "--sample", "3", "--max-new-tokens", "5", "--json",
                        "--prior", "standard_normal")
    assert learned.returncode == 0 and standard.returncode == 0, learned.stderr[-2000:] + standard.stderr[-2000:]
    assert json.loads(learned.stdout)["prior"].startswith("gmm") and json.loads(standard.stdout)["prior"] == "standard_normal"
    too_many = _seq2vae("fit-prior", "--model", str(model), "--data", str(corpus), "--components", "100")
    assert too_many.returncode == 2 and "cannot fit 100 components" in too_many.stderr
    assert math.isfinite(saved_prior(model).record["mean_log_likelihood"])
    flow = _seq2vae("fit-prior", "--kind", "flow", "--flow-steps", "30", "--model", str(model), "--data", str(corpus))
    assert flow.returncode == 0 and "RealNVP flow" in flow.stdout, flow.stderr[-2000:]
    from_flow = _seq2vae("generate", "--model", str(model), "--sample", "3", "--max-new-tokens", "5", "--json", "--prior", "flow")
    assert from_flow.returncode == 0 and json.loads(from_flow.stdout)["prior"].startswith("flow"), from_flow.stderr[-2000:]
    assert saved_prior(model).name == "gmm"  # auto keeps the mixture when both are saved
