"""Priors over z to sample from: the standard normal the KL is measured against, and a learned one.

A VAE's aggregate posterior q(z) = E_x q(z|x) rarely fills N(0, I): decoding N(0, I) draws then
visits regions no sentence was encoded to. `GaussianMixturePrior` is fitted by EM to draws from
q(z) (after training, `fit_gaussian_mixture`) and saved beside the model (`prior_gmm.safetensors`),
so `generate --sample`, `Seq2SeqVAE.sample` and the evaluation harness can sample where the decoder
was trained; `prior_flow.FlowPrior` is the normalizing-flow alternative (`fit-prior --kind flow`).
All priors share one interface: `sample(n, generator) -> [n,Z]`,
`log_prob(z [...,Z]) -> [...]`, `name`. Pure torch, single device.
Shape legend: N points, C mixture components, Z latent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .prior_flow import FLOW_FILE, FlowPrior

GMM_FILE = "prior_gmm.safetensors"
GMM_RECORD = "prior_gmm.json"
LOG_2PI = math.log(2.0 * math.pi)


class StandardNormalPrior:
    """N(0, I): the prior of the training objective."""

    name = "standard_normal"

    def __init__(self, latent_dim: int):
        self.latent_dim = latent_dim

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(num_samples, self.latent_dim, generator=generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + z.double().pow(2)).sum(-1)


class GaussianMixturePrior:
    """A mixture of C diagonal Gaussians over z: weights [C], means [C,Z], log_variances [C,Z].

    `temperature` scales the component deviations when sampling (1: the fitted density; below 1,
    samples nearer the component means, which trades diversity for fidelity as in Glow or NVAE).
    It is saved in the record; `log_prob` is always the fitted density.
    """

    name = "gmm"

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, log_variances: torch.Tensor, record: dict | None = None):
        if means.shape != log_variances.shape or weights.shape != means.shape[:1]:
            raise ValueError(
                f"GaussianMixturePrior: weights [C], means and log_variances [C,Z] expected; got "
                f"{tuple(weights.shape)}, {tuple(means.shape)}, {tuple(log_variances.shape)}"
            )
        self.weights, self.means, self.log_variances = weights.double(), means.double(), log_variances.double()
        self.record = record or {}
        self.temperature = float(self.record.get("temperature", 1.0))

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log w_c + log N(z; mean_c, diag var_c) for every component. z [N,Z] -> [N,C]."""
        z = z.double()
        precision = torch.exp(-self.log_variances)  # [C,Z]
        # sum_d (z_d - m_cd)^2 / v_cd expanded into matmuls: no [N,C,Z] tensor.
        squared = z.pow(2) @ precision.T - 2.0 * z @ (self.means * precision).T + (self.means.pow(2) * precision).sum(-1)
        log_normal = -0.5 * (squared + self.log_variances.sum(-1) + self.latent_dim * LOG_2PI)
        return log_normal + torch.log(self.weights)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z). z [...,Z] -> [...]."""
        flat = z.reshape(-1, z.shape[-1])
        return torch.logsumexp(self.component_log_prob(flat), dim=1).reshape(z.shape[:-1])

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        components = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.latent_dim, generator=generator, dtype=torch.float64)
        deviation = self.temperature * torch.exp(0.5 * self.log_variances[components])
        return (self.means[components] + deviation * noise).float()

    def save(self, directory: str | Path) -> Path:
        """Writes prior_gmm.safetensors (tensors) and prior_gmm.json (how it was fitted) into a model directory."""
        directory = Path(directory)
        tensors = {"weights": self.weights, "means": self.means, "log_variances": self.log_variances}
        save_file({k: v.contiguous() for k, v in tensors.items()}, directory / GMM_FILE)
        (directory / GMM_RECORD).write_text(json.dumps({**self.record, "temperature": self.temperature}, indent=2))
        return directory / GMM_FILE

    @classmethod
    def load(cls, directory: str | Path) -> GaussianMixturePrior:
        directory = Path(directory)
        tensors = load_file(directory / GMM_FILE)
        record_path = directory / GMM_RECORD
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        return cls(tensors["weights"], tensors["means"], tensors["log_variances"], record)


# name -> (weights file in a model directory, class): the mixture first, as "auto" prefers it.
LEARNED_PRIORS = {"gmm": (GMM_FILE, GaussianMixturePrior), "flow": (FLOW_FILE, FlowPrior)}


def _saved_kinds(directory: Path):
    """(name, class) of each learned prior whose weights file is in `directory`, in LEARNED_PRIORS order."""
    return ((name, kind) for name, (file, kind) in LEARNED_PRIORS.items() if (directory / file).is_file())


def saved_priors(directory: str | Path) -> list:
    """Every learned prior saved in a model directory (the mixture first), [] when none was fitted."""
    directory = Path(directory)
    return [kind.load(directory) for _, kind in _saved_kinds(directory)]


def saved_prior(directory: str | Path, kind: str = "auto"):
    """The learned prior of `kind` ("gmm", "flow"; "auto": the mixture when there is one, else the flow)
    saved in a model directory, or None (only that one is loaded). The mixture wins "auto" because it
    measured better samples on the synthetic corpus at the same held-out density (bench/RESULTS.md)."""
    directory = Path(directory)
    chosen = next((prior for name, prior in _saved_kinds(directory) if kind in ("auto", name)), None)
    return chosen.load(directory) if chosen is not None else None


def fit_gaussian_mixture(
    points: torch.Tensor,
    num_components: int = 32,
    iterations: int = 100,
    min_variance: float = 1e-4,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-6,
) -> GaussianMixturePrior:
    """Maximum-likelihood diagonal Gaussian mixture on points [N,Z] by EM.

    Initialised on C distinct points drawn at random with the pooled variance; `min_variance` keeps a
    component from collapsing onto one point. Stops when the mean log-likelihood improves by less
    than `tolerance` nats. The returned prior's `record` holds the final mean log-likelihood.
    """
    points = points.double()
    num_points = points.shape[0]
    if num_points < num_components:
        raise ValueError(f"fit_gaussian_mixture: {num_points} points cannot seed {num_components} components")
    start = torch.randperm(num_points, generator=generator)[:num_components]
    means = points[start].clone()
    log_variances = torch.log(points.var(0, unbiased=False) + min_variance).expand_as(means).clone()
    weights = torch.full((num_components,), 1.0 / num_components, dtype=torch.float64)
    previous = -math.inf
    iterations_run = 0  # EM iterations begun, the converged one included
    for _ in range(iterations):
        iterations_run += 1
        prior = GaussianMixturePrior(weights, means, log_variances)
        joint = prior.component_log_prob(points)  # [N,C]
        log_likelihood = torch.logsumexp(joint, dim=1)
        mean_log_likelihood = float(log_likelihood.mean())
        if mean_log_likelihood - previous < tolerance:
            break
        previous = mean_log_likelihood
        responsibility = torch.exp(joint - log_likelihood[:, None])  # [N,C]
        counts = responsibility.sum(0) + 1e-12
        weights = counts / num_points
        means = responsibility.T @ points / counts[:, None]
        variances = responsibility.T @ points.pow(2) / counts[:, None] - means.pow(2)
        log_variances = torch.log(variances.clamp_min(0.0) + min_variance)
    record = {"kind": "gaussian_mixture", "num_components": num_components, "num_points": num_points,
              "iterations": iterations_run, "mean_log_likelihood": previous}
    return GaussianMixturePrior(weights, means, log_variances, record)
