"""fp32 latent arithmetic inside a bf16 model.

Under bf16 the posterior head's mu and logvar, the reparameterisation mu + exp(logvar / 2) * noise and the
latent projections would round to 8 significant bits: a small sigma (exp(-6) next to mu ~ 1) disappears
from z, and the KL is computed from rounded statistics. These layers compute in fp32 whatever dtype
their weights were cast to (DeepSpeed's bf16 engine casts the whole module; its fp32 masters live in
the optimizer), and the backbone gets their outputs in its own dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Float32Linear(nn.Linear):
    """nn.Linear that upcasts input, weight and bias to fp32 and returns fp32.

    The upcast happens inside this module's own forward, so ZeRO-3 has gathered the weight by then.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        bias = self.bias.float() if self.bias is not None else None
        return F.linear(inputs.float(), self.weight.float(), bias)
