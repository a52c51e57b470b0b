"""The fixture both tests/evaluation/test_profiles.py and the golden script (docs/CONVENTIONS.md,
"How the profile goldens were made") build: posteriors, samples and log-likelihoods of N sentences.

Deterministic from a seed, plain torch only, so the reference code run outside the repository sees
exactly the tensors our profiles see. Shape legend: N sentences, Z latent, T target length, V vocab,
K importance samples.
"""

from __future__ import annotations

import torch

NUM_SENTENCES = 600  # park2021's batches of 256: 256 + 256 + 88 (a short last batch)
LATENT_DIM = 8
MAX_LENGTH = 12
VOCAB = 20
NUM_SAMPLES = 100  # Optimus' K
PAD_ID, EOS_ID = 0, 1


def build(seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 tensors: mu, logvar, z0 [N,Z]; logits [N,T,V]; labels [N,T] (T5 style: EOS then PAD=0);
    num_tokens [N] (incl. EOS); z_samples [N,K,Z]; log_px_z [N,K]; words [N] (whitespace words + EOS)."""
    g = torch.Generator().manual_seed(seed)
    n, z_dim, t, v, k = NUM_SENTENCES, LATENT_DIM, MAX_LENGTH, VOCAB, NUM_SAMPLES
    # Dimension scales from 0.02 to 2: var(mu) straddles the 0.01 AU threshold.
    scales = torch.logspace(-1.7, 0.3, z_dim)
    mu = torch.randn(n, z_dim, generator=g) * scales
    logvar = torch.randn(n, z_dim, generator=g) * 0.5 - 1.0
    std = torch.exp(0.5 * logvar)
    z0 = mu + std * torch.randn(n, z_dim, generator=g)
    num_tokens = torch.randint(3, t + 1, (n,), generator=g)
    labels = torch.randint(2, v, (n, t), generator=g)
    positions = torch.arange(t)[None, :]
    labels = torch.where(positions == (num_tokens[:, None] - 1), torch.full_like(labels, EOS_ID), labels)
    labels = torch.where(positions >= num_tokens[:, None], torch.full_like(labels, PAD_ID), labels)
    logits = torch.randn(n, t, v, generator=g) * 2.0
    z_samples = mu[:, None] + std[:, None] * torch.randn(n, k, z_dim, generator=g)
    log_px_z = -(num_tokens[:, None].float() * 2.5 + torch.rand(n, k, generator=g) * 4.0)
    words = torch.randint(2, 9, (n,), generator=g)
    return {
        "mu": mu, "logvar": logvar, "z0": z0, "logits": logits, "labels": labels, "num_tokens": num_tokens,
        "z_samples": z_samples, "log_px_z": log_px_z, "words": words,
    }


def recon_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per sentence from logits, summed over non-padding targets (EOS included). [N]"""
    log_probs = torch.log_softmax(logits.double(), dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    return -(log_probs * (labels != PAD_ID)).sum(-1)
