"""The flow prior: its density is the change of variables of an exact inverse (checked against the
Jacobian and by integrating to 1), a fit beats the best single Gaussian on two clusters and samples
them in proportion, it round-trips through a model directory, and "auto" still prefers the mixture."""

from __future__ import annotations

import math

import pytest
import torch

from seq2vae.model.prior import GaussianMixturePrior, saved_prior, saved_priors
from seq2vae.model.prior_flow import FLOW_FILE, FlowPrior, fit_flow


def _perturbed(latent_dim: int, seed: int = 0, scale: float = 0.5) -> FlowPrior:
    """A flow that is not the identity: the couplings' zero-initialised last layers get random weights."""
    flow = FlowPrior(latent_dim, num_couplings=4, hidden=16, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
        flow.center.copy_(torch.randn(latent_dim, generator=generator))
        flow.log_deviation.copy_(0.3 * torch.randn(latent_dim, generator=generator))
    return flow.eval()


def test_inverse_is_exact_and_log_det_is_the_jacobians():
    flow = _perturbed(3)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    u, log_det = flow.to_normal(z)
    back = u
    for coupling in reversed(flow.couplings):
        back = coupling.inverse(back)
    back = back * torch.exp(flow.log_deviation) + flow.center
    assert torch.allclose(back, z, atol=1e-5)
    for point, expected in zip(z, log_det):
        jacobian = torch.autograd.functional.jacobian(lambda x: flow.to_normal(x[None])[0][0], point)
        assert float(torch.linalg.slogdet(jacobian).logabsdet) == pytest.approx(float(expected.detach()), abs=1e-4)


def test_density_integrates_to_one():
    flow = _perturbed(2, seed=3, scale=0.15)  # bent, but its mass stays on the grid
    axis = torch.linspace(-12, 12, 601)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    cell = float(axis[1] - axis[0]) ** 2
    assert float(torch.exp(flow.log_prob(grid)).sum()) * cell == pytest.approx(1.0, abs=0.01)


def _two_clusters(num_points: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(num_points // 4, 2, generator=generator) * 0.3 + torch.tensor([4.0, 0.0])
    second = torch.randn(num_points - num_points // 4, 2, generator=generator) * 0.5 + torch.tensor([-2.0, 1.0])
    return torch.cat([first, second])


def test_fit_beats_one_gaussian_and_samples_clusters_in_proportion():
    points, held_out = _two_clusters(3000, seed=0), _two_clusters(1000, seed=1)
    flow = fit_flow(points, num_couplings=6, hidden=64, steps=600, lr=3e-3)
    mean, covariance = points.mean(0), torch.cov(points.T)
    gaussian = torch.distributions.MultivariateNormal(mean, covariance)
    assert float(flow.log_prob(held_out).mean()) > float(gaussian.log_prob(held_out).mean()) + 0.5
    draws = flow.sample(4000, torch.Generator().manual_seed(2))
    assert float((draws[:, 0] > 1.0).float().mean()) == pytest.approx(0.25, abs=0.05)
    assert flow.record["best_step"] >= 100 and math.isfinite(flow.record["held_out_mean_log_likelihood"])


def test_round_trip_and_auto_prefers_the_mixture(tmp_path):
    flow = _perturbed(3)
    flow.temperature = 0.7
    flow.save(tmp_path)
    loaded = saved_prior(tmp_path)
    assert isinstance(loaded, FlowPrior) and loaded.temperature == 0.7 and (tmp_path / FLOW_FILE).is_file()
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.log_prob(z), flow.log_prob(z))
    assert torch.equal(loaded.sample(6, torch.Generator().manual_seed(4)), flow.sample(6, torch.Generator().manual_seed(4)))
    GaussianMixturePrior(torch.ones(1), torch.zeros(1, 3), torch.zeros(1, 3)).save(tmp_path)
    assert saved_prior(tmp_path).name == "gmm" and saved_prior(tmp_path, "flow").name == "flow"
    assert [prior.name for prior in saved_priors(tmp_path)] == ["gmm", "flow"]
