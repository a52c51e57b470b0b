"""Latent-variable metrics on tensors: densities, KL, active units, mutual information, IW bound, perplexity.

Pure functions, no model. Conventions (docs/CONVENTIONS.md): q(z|x) = N(mu, diag(exp(logvar))), prior
N(0, I), all quantities in nats. Shape legend: N sentences, Z latent size, K importance samples,
M components of the aggregate posterior.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

LOG_2PI = math.log(2.0 * math.pi)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last (latent) dimension.

    Args: z [..., Z]; mu, logvar broadcastable to z. Returns [...].
    """
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension. z [..., Z] -> [...]."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(q(z|x) || N(0, I)) per latent dimension. mu, logvar [N, Z] -> [N, Z]."""
    return 0.5 * (mu.pow(2) + torch.exp(logvar) - 1.0 - logvar)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(q(z|x) || N(0, I)) per sentence: 0.5 sum_d (mu^2 + exp(logvar) - 1 - logvar). [N, Z] -> [N]."""
    return gaussian_kl_per_dim(mu, logvar).sum(-1)


class ActiveUnits(NamedTuple):
    count: int  # dimensions with Var_x[mu_d(x)] > delta
    variance: torch.Tensor  # [Z] variance of mu over the set, N-1 denominator
    delta: float


def active_units(mu: torch.Tensor, delta: float = 0.01) -> ActiveUnits:
    """Active units (Burda et al. 2016; He et al. 2019): dimensions whose posterior mean varies across sentences.

    Args:
        mu: [N, Z] posterior means of the whole evaluated set (gather across ranks first).
        delta: activity threshold on the variance.
    Returns: ActiveUnits(count, variance [Z] with the unbiased N-1 denominator, delta).
    Raises: ValueError for N < 2, where a sample variance is undefined.
    """
    if mu.dim() != 2:
        raise ValueError(f"active_units: mu must be [N, Z], got shape {tuple(mu.shape)}")
    if mu.shape[0] < 2:
        raise ValueError(f"active units need at least 2 sentences (variance with N-1 denominator); got N={mu.shape[0]}")
    variance = mu.double().var(dim=0, unbiased=True).to(mu.dtype)
    return ActiveUnits(int((variance > delta).sum()), variance, delta)


class MutualInformation(NamedTuple):
    nats: float
    aggregate: str  # "dataset" (M = N), "mini-batch" (consecutive groups) or "mini-batch by length" (He et al.)
    num_components: int  # M: the largest mixture estimating q(z); the estimate is capped at log M


# Float64 rounding of the expanded square, relative to the size of its terms, times a safety factor.
_EXPANSION_ERROR = 8 * torch.finfo(torch.float64).eps
# Largest error (nats) tolerated in one log-density before a chunk is recomputed from differences.
_MAX_LOG_DENSITY_ERROR = 1e-6


def _log_density_matrix(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """log q(z_i | x_j) for all pairs. z [C, Z], mu/logvar [M, Z] (float64) -> [C, M].

    Fast path: expand sum_d (z_id - mu_jd)^2 / var_jd into three matmuls (no [C, M, Z] tensor). The
    expansion subtracts terms of size (z^2 + mu^2) / var, so for sharp posteriors (|mu| ~ 10, logvar
    ~ -30, as autoencoder phases leave them) float64 cancellation costs whole nats. When the worst
    pair's rounding could exceed 1e-6 nats, the chunk is recomputed from the differences directly, in
    pieces of at most `chunk_elements` [c, M, Z] elements (as He et al. and Optimus always do).
    """
    precision = torch.exp(-logvar)  # [M, Z]
    squared = z.pow(2) @ precision.T - 2.0 * z @ (mu * precision).T + (mu.pow(2) * precision).sum(-1)
    # An upper bound on every term's magnitude: sum_d (|z_id| + |mu_jd|)^2 / var_jd.
    magnitude = z.pow(2) @ precision.T + 2.0 * z.abs() @ (mu.abs() * precision).T + (mu.pow(2) * precision).sum(-1)
    if float(magnitude.max()) * z.shape[-1] * _EXPANSION_ERROR > _MAX_LOG_DENSITY_ERROR:
        rows_per_piece = max(1, chunk_elements // max(1, mu.numel()))
        squared = torch.cat(
            [
                ((z[start : start + rows_per_piece, None, :] - mu) ** 2 * precision).sum(-1)
                for start in range(0, z.shape[0], rows_per_piece)
            ]
        )
    return -0.5 * (squared + logvar.sum(-1) + z.shape[-1] * LOG_2PI)


def _mi_sum(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, chunk_elements: int) -> float:
    """Sum over i of log q(z_i|x_i) - [logsumexp_j log q(z_i|x_j) - log M], rows chunked to bound memory."""
    num_components = mu.shape[0]
    rows_per_chunk = max(1, chunk_elements // num_components)
    total = 0.0
    for start in range(0, z.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        log_q_mixture = torch.logsumexp(_log_density_matrix(z[rows], mu, logvar, chunk_elements), dim=1) - math.log(
            num_components
        )
        log_q_own = log_normal(z[rows], mu[rows], logvar[rows])
        total += float((log_q_own - log_q_mixture).sum())
    return total


def length_buckets(lengths: torch.Tensor, mini_batch_size: int) -> list[torch.Tensor]:
    """He et al. (2019)'s evaluation batches: sentences of equal length, at most M per batch.

    Sentences are grouped by length (shortest first, file order within a length) and each length's
    group is cut into batches of M, its last batch possibly shorter. lengths [N] -> index tensors.
    """
    order = torch.sort(lengths, stable=True).indices
    sorted_lengths = lengths[order]
    batches = []
    for length in torch.unique_consecutive(sorted_lengths):
        members = order[sorted_lengths == length]
        batches.extend(members.split(mini_batch_size))
    return batches


def mutual_information(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor | None = None,
    *,
    mini_batch_size: int | None = None,
    lengths: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_elements: int = 2**24,
) -> MutualInformation:
    """I(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)], q(z) the mixture of the evaluated posteriors.

    One sample z_i ~ q(z|x_i) per sentence; both terms are evaluated at that sample, so identical
    posteriors give exactly 0 and the estimate never exceeds log M.

    Args:
        mu, logvar: [N, Z] posteriors of the whole evaluated set, in a fixed (global) order.
        z: [N, Z] one sample per sentence; drawn with `generator` when None.
        mini_batch_size: None for the aggregate posterior over the whole set (M = N, as Optimus);
            an integer M for a mini-batch estimate: each mini-batch is its own mixture, and the
            per-sentence terms are averaged over all N sentences (mini-batches weighted by size).
        lengths: [N] sentence lengths; with `mini_batch_size`, the mini-batches are He et al.'s
            equal-length buckets (`length_buckets`). Without, consecutive groups of M in the given
            order, which depends on the file order and is not comparable to He et al.'s numbers.
        chunk_elements: bound on the elements of the density matrices held at once (float64), so N
            in the tens of thousands fits in memory.
    Returns: MutualInformation(nats, aggregate, num_components).
    """
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(f"mutual_information: mu and logvar must both be [N, Z]; got {tuple(mu.shape)}, {tuple(logvar.shape)}")
    num_sentences = mu.shape[0]
    if num_sentences == 0:
        raise ValueError("mutual information needs at least 1 sentence; got N=0")
    mu, logvar = mu.double(), logvar.double()
    if z is None:
        noise = torch.randn(mu.shape, generator=generator, dtype=torch.float64)
        z = mu + torch.exp(0.5 * logvar) * noise
    z = z.double()
    if mini_batch_size is None:
        return MutualInformation(_mi_sum(z, mu, logvar, chunk_elements) / num_sentences, "dataset", num_sentences)
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
    if lengths is None:
        batches = list(torch.arange(num_sentences).split(mini_batch_size))
        aggregate = "mini-batch"
    else:
        if lengths.shape != (num_sentences,):
            raise ValueError(f"mutual_information: lengths must be [N]={num_sentences}, got {tuple(lengths.shape)}")
        batches = length_buckets(lengths, mini_batch_size)
        aggregate = "mini-batch by length"
    total = sum(_mi_sum(z[rows], mu[rows], logvar[rows], chunk_elements) for rows in batches)
    return MutualInformation(total / num_sentences, aggregate, max(len(rows) for rows in batches))


def iw_log_likelihood(log_px_z: torch.Tensor, log_pz: torch.Tensor, log_qz_x: torch.Tensor) -> torch.Tensor:
    """Importance-weighted lower bound on log p(x) (Burda et al. 2016) with z_k ~ q(z|x).

    log p(x) >= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K.

    Args: log_px_z, log_pz, log_qz_x: [N, K]. Returns [N] (the bound; IW-NLL is its negation).
    """
    if not (log_px_z.shape == log_pz.shape == log_qz_x.shape) or log_px_z.dim() != 2:
        raise ValueError(
            "iw_log_likelihood: inputs must all be [N, K]; got "
            f"{tuple(log_px_z.shape)}, {tuple(log_pz.shape)}, {tuple(log_qz_x.shape)}"
        )
    num_samples = log_px_z.shape[1]
    if num_samples < 1:
        raise ValueError("iw_log_likelihood needs K >= 1 samples")
    log_weights = log_px_z + log_pz - log_qz_x
    return torch.logsumexp(log_weights, dim=1) - math.log(num_samples)


def perplexity(total_nll: float, count: int) -> float:
    """exp(sum of NLL / number of units); NaN when nothing was counted."""
    if count <= 0:
        return math.nan
    return math.exp(min(total_nll / count, 700.0))  # cap keeps exp finite for untrained models


def count_predicted_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Predicted target tokens per sentence (EOS included, -100 padding excluded). labels [B, T] -> [B]."""
    return (labels != -100).sum(-1)


def count_words(text: str) -> int:
    """Whitespace words plus one for the EOS the model also predicts (He et al. 2019 count words + EOS)."""
    return len(text.split()) + 1
