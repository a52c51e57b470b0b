"""The VAE's own settings: what turns a seq2seq backbone into a text VAE. Saved as vae_config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from transformers import PretrainedConfig

from ..config import ConfigError, build_from_dict, doc
from .reference_compat import ReferenceCompat

Pooling = Literal["mean", "max", "first", "attention"]
Injection = Literal["memory", "embedding", "both", "prefix", "prefix_embedding"]


@dataclass
class VAEConfig:
    backbone: str = doc(
        "t5-small",
        "pretrained seq2seq model: hub name or local directory; 'debug-t5' / 'debug-bart' build a tiny "
        "random backbone (2+2 layers, d_model 64) for tests and CPU smoke runs",
    )
    tokenizer: str | None = doc(None, "tokenizer name or directory; defaults to the backbone's")
    latent_dim: int = doc(32, "size Z of the latent code z")
    pooling: Pooling = doc("mean", "how encoder states become one vector; every mode ignores padding")
    injection: Injection = doc(
        "memory",
        "how z reaches the decoder: 'memory' = z projected to memory_states pseudo-encoder states the "
        "decoder cross-attends to; 'embedding' = z projected and added to every decoder input embedding; "
        "'both'; 'prefix' = z projected to one self-attention key/value slot per decoder layer, cross-attention "
        "off (the reference T5-VAE); 'prefix_embedding' = prefix + embedding (Optimus)",
    )
    memory_states: int = doc(1, "number M of pseudo-encoder states z is projected to (memory injection)")
    dropout: float | None = doc(
        None,
        "the backbone's dropout probability for this run (T5: dropout_rate; BART: dropout, attention_dropout, "
        "activation_dropout); null keeps the backbone's own",
    )
    gradient_checkpointing: bool = doc(False, "recompute backbone activations in backward to save memory")
    init_from: str | None = doc(
        None,
        "start training from these weights instead of the backbone's: a model directory (`seq2vae export` "
        "output) or a run directory (its latest checkpoint); optimizer, data order and step start fresh. "
        "Its backbone, latent_dim, pooling, injection and memory_states must equal this config's",
    )

    reference_compat: ReferenceCompat = doc(
        default_factory=ReferenceCompat,
        help="switches reproducing the reference T5-VAE code's quirks (model/reference_compat.py); all off by default",
    )

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {self.latent_dim}")
        if self.memory_states < 1:
            raise ConfigError(f"model.memory_states must be >= 1, got {self.memory_states}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.reference_compat.pool_padding and self.pooling not in ("mean", "max"):
            raise ConfigError(f"model.reference_compat.pool_padding: the reference pools with mean or max, not {self.pooling!r}")
        if self.reference_compat.prefix_reshape and not self.injection.startswith("prefix"):
            raise ConfigError(
                f"model.reference_compat.prefix_reshape needs model.injection prefix or prefix_embedding, got {self.injection!r}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "vae_config.json") -> "VAEConfig":
        return build_from_dict(cls, values, "model", source)


# The dropout probabilities T5-family and BART-family configs carry; each config has some of them.
DROPOUT_ATTRIBUTES = ("dropout_rate", "dropout", "attention_dropout", "activation_dropout")


# Flan-T5 / T5 v1.1 ("gated-gelu") name `gelu_new`: the tanh approximation written as ~5 elementwise
# kernels that keep about 4x their input alive for backward. `gelu_pytorch_tanh` is the same function
# (equal to bf16 rounding, tests/model/test_activation.py) in one kernel that saves only its input.
FUSED_ACTIVATIONS = {"gelu_new": "gelu_pytorch_tanh"}
ACTIVATION_ATTRIBUTES = ("dense_act_fn", "activation_function")  # T5 family, BART family


def with_fused_activation(backbone_config: PretrainedConfig) -> PretrainedConfig:
    """`backbone_config` with an activation that has a fused equal (FUSED_ACTIVATIONS) switched to it."""
    for name in ACTIVATION_ATTRIBUTES:
        current = getattr(backbone_config, name, None)
        if current in FUSED_ACTIVATIONS:
            setattr(backbone_config, name, FUSED_ACTIVATIONS[current])
    return backbone_config


def with_dropout(backbone_config: PretrainedConfig, dropout: float | None) -> PretrainedConfig:
    """`backbone_config` with every dropout probability it has set to `dropout` (None: unchanged)."""
    if dropout is not None:
        for name in DROPOUT_ATTRIBUTES:
            if hasattr(backbone_config, name):
                setattr(backbone_config, name, dropout)
    return backbone_config
