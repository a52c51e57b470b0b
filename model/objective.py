"""The VAE training objective, kept out of the model's forward so phases can reshape it freely.

loss = mean over sentences of [ reconstruction + beta * thresholded KL ]

Free bits (KL thresholding): each latent dimension's KL is replaced by max(lambda, KL_d), so
dimensions below lambda get no gradient pushing them to the prior. Two lineages (docs/CONVENTIONS.md):
- `dimension` thresholds each sentence's KL_d. Optimus' `dim_target_kl` does the same with the same
  gradient, but masks a KL_d below lambda to 0 where we clamp it to lambda, so its reported loss is
  lower than ours by lambda times the number of (sentence, dimension) pairs below lambda.
- `batch` thresholds the batch-mean KL_d (Kingma et al. 2016's free bits), which lets single
  sentences go below lambda as long as the batch mean does not.
"""

from __future__ import annotations

from typing import Literal

import torch

from .reference_compat import reference_reconstruction


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per dimension: mu, logvar [..., Z] -> [..., Z] (float32)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def vae_loss(
    recon_nll: torch.Tensor,
    kl_per_dim: torch.Tensor,
    beta: float,
    free_bits: float = 0.0,
    free_bits_mode: Literal["dimension", "batch"] = "dimension",
    recon_mean_length: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Assembles the training loss.

    Args:
        recon_nll: [B] per-sentence reconstruction NLL (summed over target tokens).
        kl_per_dim: [B,Z] per-sentence, per-dimension KL.
        beta: KL weight at this step.
        free_bits: threshold lambda in nats per dimension (0 disables it).
        free_bits_mode: "dimension" (per sentence and dimension) or "batch" (batch mean per dimension).
        recon_mean_length: model.reference_compat.recon_mean_length; N > 0 divides the reconstruction
            term of the loss by N (the reference's mean over B x N positions); 0 keeps the sum.
    Returns:
        (loss scalar, parts) where parts holds detached batch means of `recon`, `kl` (raw, what -ELBO
        uses), `kl_thresholded` (what the loss uses) and `loss`.
    """
    kl_raw = kl_per_dim.sum(-1)  # [B]
    if free_bits <= 0:
        kl_used = kl_raw.mean()
    elif free_bits_mode == "dimension":
        kl_used = kl_per_dim.clamp_min(free_bits).sum(-1).mean()
    elif free_bits_mode == "batch":
        kl_used = kl_per_dim.mean(0).clamp_min(free_bits).sum()
    else:
        raise ValueError(f"unknown free_bits_mode {free_bits_mode!r}; valid: dimension, batch")
    recon = recon_nll.mean()
    loss = reference_reconstruction(recon_nll, recon_mean_length) + beta * kl_used
    parts = {
        "loss": loss.detach(),
        "recon": recon.detach(),
        "kl": kl_raw.mean().detach(),
        "kl_thresholded": kl_used.detach(),
    }
    return loss, parts
