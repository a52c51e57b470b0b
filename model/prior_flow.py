"""A normalizing-flow prior over z (RealNVP affine couplings), fitted by maximum likelihood to q(z).

A stronger learned prior than the Gaussian mixture of `prior.py`: an invertible map f from z to a
standard normal u, log p(z) = log N(f(z); 0, I) + log |det df/dz|, so it can bend around the curved,
clustered aggregate posterior a diagonal mixture tiles with blobs. Layers: a fixed standardisation
(the points' mean and deviation), then `num_couplings` affine couplings, each transforming half the
dimensions (alternating halves, with a fixed random permutation between couplings) by a scale and shift
computed from the other half by a small MLP; scales are tanh-bounded so the fit cannot blow up.
Same interface as the other priors: `sample(n, generator)`, `log_prob(z)`, `name`, `record`,
`temperature` (scales u when sampling, as in Glow). Saved as prior_flow.safetensors + prior_flow.json.
Shape legend: N points, Z latent, H hidden width.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FLOW_FILE = "prior_flow.safetensors"
FLOW_RECORD = "prior_flow.json"
LOG_2PI = math.log(2.0 * math.pi)


class AffineCoupling(nn.Module):
    """u_b = x_b * exp(s(x_a)) + t(x_a) for the transformed half b, u_a = x_a; log-det = sum s."""

    def __init__(self, latent_dim: int, hidden: int, transformed: torch.Tensor):
        super().__init__()
        self.register_buffer("transformed", transformed)  # [Z] bool: the half b this coupling changes
        kept = int((~transformed).sum())
        self.net = nn.Sequential(nn.Linear(kept, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 2 * int(transformed.sum())))
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity map
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self.net(kept).chunk(2, dim=-1)
        return 2.0 * torch.tanh(log_scale / 2.0), shift  # |log scale| < 2 per coupling

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self._scale_shift(x[:, ~self.transformed])
        u = x.clone()
        u[:, self.transformed] = x[:, self.transformed] * torch.exp(log_scale) + shift
        return u, log_scale.sum(-1)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        log_scale, shift = self._scale_shift(u[:, ~self.transformed])
        x = u.clone()
        x[:, self.transformed] = (u[:, self.transformed] - shift) * torch.exp(-log_scale)
        return x


class FlowPrior(nn.Module):
    """RealNVP prior: z -> standardise -> couplings -> u ~ N(0, I)."""

    name = "flow"

    def __init__(self, latent_dim: int, num_couplings: int = 8, hidden: int = 256, seed: int = 0,
                 record: dict | None = None):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers = []
        for index in range(num_couplings):
            transformed = torch.zeros(latent_dim, dtype=torch.bool)
            # A fresh random half per coupling (seeded, so a saved flow rebuilds the same masks):
            # every dimension is transformed by about half the couplings and conditions the rest.
            chosen = torch.randperm(latent_dim, generator=generator)[: latent_dim // 2 + (index % 2) * (latent_dim % 2)]
            transformed[chosen] = True
            layers.append(AffineCoupling(latent_dim, hidden, transformed))
        self.couplings = nn.ModuleList(layers)
        self.register_buffer("center", torch.zeros(latent_dim))
        self.register_buffer("log_deviation", torch.zeros(latent_dim))
        self.latent_dim = latent_dim
        self.record = {"kind": "flow", "num_couplings": num_couplings, "hidden": hidden, "seed": seed, **(record or {})}
        self.temperature = float(self.record.get("temperature", 1.0))

    def to_normal(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, log |det du/dz|): z [N,Z] -> u [N,Z], [N]."""
        u = (z - self.center) * torch.exp(-self.log_deviation)
        log_det = (-self.log_deviation.sum()).expand(z.shape[0])
        for coupling in self.couplings:
            u, step = coupling(u)
            log_det = log_det + step
        return u, log_det

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) [N] of z [N,Z], differentiable (the fitting objective)."""
        u, log_det = self.to_normal(z.float())
        return -0.5 * (LOG_2PI + u.pow(2)).sum(-1) + log_det

    @torch.no_grad()
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z). z [...,Z] -> [...] (float64, as the other priors)."""
        return self.log_density(z.reshape(-1, z.shape[-1])).double().reshape(z.shape[:-1])

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.temperature * torch.randn(num_samples, self.latent_dim, generator=generator)
        for coupling in reversed(self.couplings):
            x = coupling.inverse(x)
        return x * torch.exp(self.log_deviation) + self.center

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, directory / FLOW_FILE)
        record = {**self.record, "latent_dim": self.latent_dim, "temperature": self.temperature}
        (directory / FLOW_RECORD).write_text(json.dumps(record, indent=2))
        return directory / FLOW_FILE

    @classmethod
    def load(cls, directory: str | Path) -> FlowPrior:
        directory = Path(directory)
        record = json.loads((directory / FLOW_RECORD).read_text())
        flow = cls(record["latent_dim"], record["num_couplings"], record["hidden"], record["seed"], record)
        flow.load_state_dict(load_file(directory / FLOW_FILE))
        return flow.eval()


def fit_flow(points: torch.Tensor, *, num_couplings: int = 8, hidden: int = 256, steps: int = 3000, batch_size: int = 512,
             lr: float = 1e-3, held_out_fraction: float = 0.1, seed: int = 0) -> FlowPrior:
    """Maximum-likelihood fit of a FlowPrior to points [N,Z] (draws from q(z)) with AdamW.

    A `held_out_fraction` of the points is kept aside; the weights of the step with the best held-out
    mean log-likelihood (checked every 100 steps) are returned, so a long fit cannot overfit. The
    record holds the held-out and training mean log-likelihoods (nats per point).
    """
    points = points.float()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(points.shape[0], generator=generator)
    held = max(1, int(held_out_fraction * points.shape[0]))
    held_out, train = points[order[:held]], points[order[held:]]
    flow = FlowPrior(points.shape[1], num_couplings, hidden, seed)
    flow.center.copy_(train.mean(0))
    flow.log_deviation.copy_(torch.log(train.std(0) + 1e-6))
    optimizer = torch.optim.AdamW(flow.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    best, best_state, best_step = -math.inf, None, 0
    for step in range(1, steps + 1):
        batch = train[torch.randint(train.shape[0], (batch_size,), generator=generator)]
        loss = -flow.log_density(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            score = float(flow.log_prob(held_out).mean())
            if score > best:
                best, best_step = score, step
                best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
    flow.load_state_dict(best_state)
    flow.eval()
    train_score = float(flow.log_prob(train).mean())
    flow.record.update({"num_points": int(points.shape[0]), "steps": steps, "best_step": best_step,
                        "held_out_mean_log_likelihood": best, "mean_log_likelihood": train_score})
    return flow
