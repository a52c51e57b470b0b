"""Switches that reproduce the reference T5-VAE code's quirks, all off by default.

Park & Lee 2021's code (github.com/seongminp/transformers-into-vaes, commit e2edc228) has quirks that
shape its published numbers. Our default behaviour is the corrected one; `model.reference_compat.*`
turns each quirk back on, so the paper's numbers can be attempted and each quirk's effect measured as
a row of a study (docs/CONVENTIONS.md, "Reference-compatibility switches"). The pure functions here
are what the switches run; data/noising.py holds the denoising one (data cannot import the model).

Shape legend: B batch, S source length, D model width, Z latent, L decoder layers, H heads, Dh head width.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..config import ConfigError, doc


@dataclass
class ReferenceCompat:
    prefix_reshape: bool = doc(
        False,
        "prefix injection reshapes the projection [B, L*H*Dh] straight to [L, B, H, 1, Dh] "
        "(vendor_t5.py:227-235 build_past), which hands sentence b the slots of other sentences when B > 1",
    )
    pool_padding: bool = doc(
        False,
        "mean / max pooling over every position, padding included (vendor_t5.py:214-217 pool); with "
        "padding='max_length' (datamodule_finetune.py:26-35) the pad states of a 256-long row enter the max",
    )
    denoise: bool = doc(
        False,
        "deletion as model_t5.py:81-101 run_batch: drop randint(0, floor(p n)) of the n non-EOS tokens "
        "(none when floor(p n) <= 1, i.e. n < 2/p), then swap input ids and attention mask (lines 100-101); "
        "uses the phase's deletion_rate as p",
    )
    recon_mean_length: int = doc(
        0,
        "0: reconstruction summed over a sentence's tokens (ours). N > 0: the token losses averaged over "
        "B x N positions, padding counted as 0 (model_t5.py:114 recon_loss.mean() over out_dim = 256 "
        "positions), which makes the effective KL weight N x beta against a summed reconstruction",
    )
    freeze_shared_embedding: bool = doc(
        False,
        "freezing the decoder also freezes the shared token embedding: model_t5.py:56-62 freeze_decoder "
        "freezes lm_head, which T5 ties to `shared`, the embedding the encoder reads too",
    )

    def __post_init__(self) -> None:
        if self.recon_mean_length < 0:
            raise ConfigError(f"model.reference_compat.recon_mean_length must be >= 0, got {self.recon_mean_length}")

    def any(self) -> bool:
        return any((self.prefix_reshape, self.pool_padding, self.denoise, self.recon_mean_length, self.freeze_shared_embedding))


def reference_prefix_reshape(projection: torch.Tensor, num_layers: int, num_heads: int, head_dim: int) -> torch.Tensor:
    """The reference's reshape: projection [B, L*H*Dh] -> [L, B, H, 1, Dh] without a per-sentence view
    first (vendor_t5.py:228-234), so for B > 1 slot (l, b) holds pieces of other sentences' projections."""
    return projection.reshape(num_layers, projection.shape[0], num_heads, 1, head_dim)


def reference_pool(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    """vendor_t5.py:214-217: mean or max over all S positions, padding included. hidden [B,S,D] -> [B,D]."""
    if mode == "mean":
        return hidden.mean(dim=1)
    if mode == "max":
        return torch.max(hidden, dim=1)[0]
    raise ValueError(f"model.reference_compat.pool_padding: the reference pools with mean or max only, not {mode!r}")


def reference_reconstruction(recon_nll: torch.Tensor, mean_length: int) -> torch.Tensor:
    """model_t5.py:111-114: cross-entropy [B, N] with 0 at padding, `.mean()` over all B x N positions.

    From per-sentence sums recon_nll [B] that is recon_nll.sum() / (B N): our batch-mean reconstruction
    divided by N. 0 keeps ours (the batch mean of per-sentence sums).
    """
    return recon_nll.mean() if mean_length <= 0 else recon_nll.mean() / mean_length


def frozen_groups(names: Iterable[str], compat: ReferenceCompat) -> set[str]:
    """The parameter groups a phase freezes: `names`, plus `embeddings` when the decoder is frozen
    under `freeze_shared_embedding` (the reference's tied LM head)."""
    frozen = set(names)
    if compat.freeze_shared_embedding and "decoder" in frozen:
        frozen.add("embeddings")
    return frozen
