"""Diagnostics that read the decoder and do not saturate: pure functions on tensors and texts.

The classic VAE numbers can look healthy on an autoencoder: MI estimated with a mixture of M
posteriors never exceeds log M, active units and probes read mu whether or not the decoder uses z,
and a large KL may be mismatch between the aggregate posterior q(z) and the prior rather than
information. These functions report what tells such models apart:
- decoder reliance: recon NLL with the sentence's own z, with another sentence's z and with a prior z;
- the rate split E_x KL(q(z|x) || p) = I(x;z) + KL(q(z) || p), with a lower bound on the mismatch
  term from the Gaussian moment-matched to q(z) (and so an upper bound on I(x;z) that never saturates),
  and MI flagged when it sits within a margin of its ceiling log M;
- free-bits floor occupancy: the share of (sentence, dimension) KL terms below the training threshold,
  where the KL term has no gradient;
- the quality of decoded samples against the synthetic grammar (grammatical, factor-consistent,
  distinct), and the gaps of -ELBO / IW-NLL to the true NLL and of MI to its hard ceiling H(x).
Shape legend: N sentences, Z latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..data.synthetic import parse_sentence, sentence_entropy
from .metrics import gaussian_kl_per_dim

# MI within this many nats of log M is reported as saturated: the estimate says "at least about
# log M", not a measurement (e^0.5 = 1.6x fewer effective components than M).
MI_SATURATION_MARGIN = 0.5


def decoder_reliance(recon_nll_own: torch.Tensor, recon_nll_other: torch.Tensor, recon_nll_prior: torch.Tensor) -> dict:
    """How much the decoder's likelihood depends on z.

    Args: per-sentence -log p(x|z) [N] with z ~ q(z|x) of the sentence itself, z ~ q(z|x') of another
        sentence x' and z ~ N(0, I). NaN entries (no other sentence available) are left out.
    Returns: the three means (nats per sentence) and the gains over the own-z NLL; a decoder that
        ignores z gains 0 from its own z, one that reads it gains up to the information z carries.
    """
    own, other, prior = (t.double() for t in (recon_nll_own, recon_nll_other, recon_nll_prior))
    paired = ~torch.isnan(other)
    return {
        "recon_nll_own_z": float(own.mean()),
        "recon_nll_other_z": float(other[paired].mean()) if paired.any() else None,
        "recon_nll_prior_z": float(prior.mean()),
        "reliance_gain_vs_other_z": float((other - own)[paired].mean()) if paired.any() else None,
        "reliance_gain_vs_prior_z": float((prior - own).mean()),
    }


def moment_matched_gaussian(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [Z] and full covariance [Z,Z] of the aggregate posterior q(z) = 1/N sum_i N(mu_i, diag var_i)."""
    mu, variance = mu.double(), logvar.double().exp()
    mean = mu.mean(0)
    centred = mu - mean
    covariance = centred.T @ centred / mu.shape[0] + torch.diag(variance.mean(0))
    return mean, covariance


def gaussian_prior_kl(mean: torch.Tensor, covariance: torch.Tensor) -> float:
    """KL(N(mean, covariance) || N(0, I)) in nats."""
    latent_dim = mean.shape[0]
    logdet = torch.linalg.slogdet(covariance).logabsdet
    return float(0.5 * (torch.trace(covariance) + mean @ mean - latent_dim - logdet))


def rate_split(kl: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, mi_nats: float, mi_components: int,
               margin: float = MI_SATURATION_MARGIN) -> dict:
    """Splits the mean KL into information and prior mismatch, with bounds that do not saturate.

    E_x KL(q(z|x) || N(0,I)) = I(x;z) + KL(q(z) || N(0,I)) exactly, q(z) the aggregate posterior.
    With g the Gaussian with q(z)'s mean and covariance, KL(q || p) = KL(q || g) + KL(g || p) for a
    Gaussian p (log g and log p are quadratics, so their expectations under q and g agree); hence
    KL(g || p) is a lower bound on the mismatch and mean KL - KL(g || p) an upper bound on I(x;z).

    Args:
        kl: [N] analytic KL per sentence; mu, logvar: [N,Z].
        mi_nats, mi_components: a mixture estimate of I(x;z) and its number of components M.
    Returns: mean KL; mismatch lower bound (Gaussian) and the mismatch the MI estimate implies
        (mean KL - MI, the sampled estimate with q(z) the mixture); the MI upper bound; MI's ceiling
        log M and whether MI is within `margin` of it.
    """
    mean_kl = float(kl.double().mean())
    mismatch = gaussian_prior_kl(*moment_matched_gaussian(mu, logvar))
    ceiling = math.log(mi_components) if mi_components > 0 else 0.0
    return {
        "prior_mismatch_gaussian": mismatch,
        "prior_mismatch_mixture": mean_kl - mi_nats,
        "mi_upper_bound": mean_kl - mismatch,
        "mi_ceiling_log_m": ceiling,
        "mi_saturated": bool(mi_components > 1 and mi_nats >= ceiling - margin),
    }


def free_bits_occupancy(kl_per_dim: torch.Tensor, threshold: float) -> dict:
    """Share of (sentence, dimension) KL terms below the free-bits threshold, where the KL has no gradient.

    Args: kl_per_dim [N,Z]; threshold: nats per dimension (the training run's free_bits).
    Returns: the share of terms below it and the dimensions whose mean KL is below it.
    """
    below = kl_per_dim < threshold
    return {
        "free_bits_threshold": threshold,
        "free_bits_share_below": float(below.double().mean()),
        "free_bits_dims_below": int((kl_per_dim.double().mean(0) < threshold).sum()),
    }


def normalise_text(text: str) -> str:
    """Decoded text with runs of whitespace collapsed, the form the grammar checker reads."""
    return " ".join(text.split())


def text_quality(texts: Sequence[str], parse: Callable) -> dict:
    """Grammaticality and diversity of decoded texts under a grammar.

    Args: texts; parse: text -> an object with `grammatical`, `well_formed`, `consistent`, `factors`
        (`seq2vae.data.synthetic.parse_sentence`).
    Returns: shares grammatical / well formed (clauses of the grammar, factors possibly mixed) /
        distinct, and how many factor combinations the grammatical ones cover.
    """
    if not texts:
        return {"num_texts": 0, "grammatical": None, "well_formed": None, "distinct": None, "factor_combinations": 0}
    parses = [parse(normalise_text(t)) for t in texts]
    combinations = {tuple(sorted(p.factors.items())) for p in parses if p.grammatical}
    return {
        "num_texts": len(texts),
        "grammatical": sum(p.grammatical for p in parses) / len(texts),
        "well_formed": sum(p.well_formed for p in parses) / len(texts),
        "distinct": len(set(texts)) / len(texts),
        "factor_combinations": len(combinations),
    }


def ground_truth_gaps(neg_elbo: torch.Tensor, iw_nll: torch.Tensor, true_log_prob: torch.Tensor, mean_kl: float,
                      mi_upper_bound: float, entropy: float) -> dict:
    """The model against the data's true distribution (synthetic corpus).

    Args: per-sentence -ELBO and IW-NLL [N] and the exact log p(x) [N]; the mean KL, the MI upper
        bound (`rate_split`) and H(x), all nats per sentence.
    Returns: the true NLL, the gaps of -ELBO and IW-NLL to it (>= 0 in expectation for any model of the
        strings), H(x) as the hard ceiling of I(x;z), and the KL in excess of it (all mismatch).
    """
    true_nll = -true_log_prob.double()
    return {
        "true_nll": float(true_nll.mean()),
        "neg_elbo_gap_to_true_nll": float((neg_elbo.double() - true_nll).mean()),
        "iw_nll_gap_to_true_nll": float((iw_nll.double() - true_nll).mean()),
        "data_entropy": entropy,
        "mi_upper_bound_share_of_entropy": mi_upper_bound / entropy,
        "kl_excess_over_entropy": mean_kl - entropy,
    }


def posterior_diagnostics(stats: dict[str, torch.Tensor], mi_nats: float, mi_components: int,
                          free_bits: float | None) -> tuple[dict, list[str]]:
    """The decoder-side diagnostics of one evaluated set, as flat metrics plus notes.

    Args: stats as the harness gathers them (mu, logvar [N,Z], kl [N]; recon_nll, recon_nll_other_z,
        recon_nll_prior_z [N] when decoder reliance was scored); the dataset MI estimate and its M;
        free_bits: the training threshold (nats per dimension), None to skip the occupancy.
    """
    metrics = rate_split(stats["kl"], stats["mu"], stats["logvar"], mi_nats, mi_components)
    notes = []
    if metrics["mi_saturated"]:
        notes.append(
            f"MI {mi_nats:.3f} nats is within {MI_SATURATION_MARGIN} of its ceiling log M = "
            f"{metrics['mi_ceiling_log_m']:.3f} (M = {mi_components} sentences): it says only 'at least about log M'; "
            f"read mi_upper_bound ({metrics['mi_upper_bound']:.2f}) and the prior mismatch instead"
        )
    if "recon_nll_prior_z" in stats:
        metrics.update(decoder_reliance(stats["recon_nll"], stats["recon_nll_other_z"], stats["recon_nll_prior_z"]))
    if free_bits is not None:
        metrics.update(free_bits_occupancy(gaussian_kl_per_dim(stats["mu"].double(), stats["logvar"].double()), free_bits))
    return metrics, notes


# Sentences checked before parsing a whole set: real corpora fail at once, so they cost nothing.
_SYNTHETIC_PROBE = 20


def synthetic_log_probs(texts: Sequence[str | None]) -> torch.Tensor | None:
    """Exact log p(x) [N] of each text under the synthetic corpus, or None when the texts are not all its sentences."""
    if not texts or any(t is None for t in texts):
        return None
    if not all(parse_sentence(t).grammatical for t in texts[:_SYNTHETIC_PROBE]):
        return None
    log_probs = torch.tensor([parse_sentence(t).log_prob for t in texts], dtype=torch.float64)
    return log_probs if bool(torch.isfinite(log_probs).all()) else None


def synthetic_diagnostics(metrics: dict, stats: dict[str, torch.Tensor], true_log_prob: torch.Tensor,
                          samples_by_prior: dict[str, list[str]], interpolations: list[list[str]]) -> dict:
    """Ground-truth metrics when the data are the synthetic corpus: gaps to the true NLL, MI against H(x),
    and the grammar's verdict on prior samples (per prior) and interpolation points."""
    neg_elbo = stats["recon_nll"].double() + stats["kl"].double()
    result = ground_truth_gaps(neg_elbo, -stats["iw_log_px"].double(), true_log_prob, metrics["kl"],
                               metrics["mi_upper_bound"], sentence_entropy())
    for name, texts in samples_by_prior.items():
        quality = text_quality(texts, parse_sentence)
        result.update({f"prior_{name}_{key}": value for key, value in quality.items() if key != "num_texts"})
    points = [text for steps in interpolations for text in steps]
    result["interpolation_grammatical"] = text_quality(points, parse_sentence)["grammatical"]
    return result
