"""Pooling of encoder states into one vector per sentence. Every mode ignores padding positions."""

from __future__ import annotations

import torch
from torch import nn

from .reference_compat import reference_pool


class Pooler(nn.Module):
    """`mean` (masked mean), `max` (masked max), `first` (first token), `attention` (a learned query
    attending over the non-padding states).

    The reference T5-VAE max-pools over padding too, so its code for a sentence depends on how much
    padding the batch adds; here padding never changes the result.
    """

    def __init__(self, mode: str, model_width: int, include_padding: bool = False):
        super().__init__()
        self.mode = mode
        self.include_padding = include_padding  # model.reference_compat.pool_padding
        if mode == "attention":
            self.query = nn.Parameter(torch.zeros(model_width))
        elif mode not in ("mean", "max", "first"):
            raise ValueError(f"unknown pooling {mode!r}; valid: mean, max, first, attention")

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [B,S,D], attention_mask [B,S] (1 = token) -> pooled [B,D]."""
        if self.include_padding:
            return reference_pool(hidden, self.mode)
        mask = attention_mask.to(torch.bool)
        if self.mode == "first":
            return hidden[:, 0]
        if self.mode == "mean":
            weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B,S,1]
            return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        if self.mode == "max":
            return hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).amax(1)
        scores = (hidden @ self.query.to(hidden.dtype)) / hidden.shape[-1] ** 0.5  # [B,S]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=-1).to(hidden.dtype)
        return torch.einsum("bs,bsd->bd", weights, hidden)
