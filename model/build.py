"""Build a Seq2SeqVAE from its typed config (the training config's `model` section)."""

from __future__ import annotations

import dataclasses

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from ..config import ConfigError
from .backbone import head_is_untied
from .config import VAEConfig, with_dropout, with_fused_activation
from .debug import DEBUG_BACKBONES, debug_backbone_config
from .vae import Seq2SeqVAE


def load_tokenizer(config: VAEConfig):
    if config.backbone in DEBUG_BACKBONES and config.tokenizer is None:
        raise ConfigError(f"model.tokenizer is required with model.backbone={config.backbone!r}")
    return AutoTokenizer.from_pretrained(config.tokenizer or config.backbone)


def backbone_config(config: VAEConfig, tokenizer=None) -> PretrainedConfig:
    """The backbone's architecture alone (no weights): the debug flavour's, or the pretrained model's
    config, with the run's `model.dropout` applied."""
    if config.backbone in DEBUG_BACKBONES:
        if tokenizer is None:  # not `or`: a tokenizer's truth value is its vocabulary size
            tokenizer = load_tokenizer(config)
        backbone = debug_backbone_config(config.backbone.removeprefix("debug-"), tokenizer)
    else:
        backbone = AutoConfig.from_pretrained(config.backbone)
    return with_fused_activation(with_dropout(backbone, config.dropout))


def build_vae(config: VAEConfig, pretrained_weights: bool = True) -> Seq2SeqVAE:
    """Pretrained weights via `from_pretrained(config.backbone)`, or a tiny random debug backbone.

    `pretrained_weights=False` builds the same architecture randomly initialised, without reading
    weights (e.g. to load a checkpoint's state dict into). Under ZeRO-3 call this inside
    `deepspeed.zero.Init` (with a live `HfDeepSpeedConfig`) so the backbone is partitioned as it loads.
    """
    if pretrained_weights and config.backbone not in DEBUG_BACKBONES:
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return Seq2SeqVAE.from_backbone(settings.pop("backbone"), **settings)
    tokenizer = load_tokenizer(config)
    architecture = backbone_config(config, tokenizer)
    # A pretrained backbone's checkpoint says whether its head is untied, also when its weights are not read.
    source = None if config.backbone in DEBUG_BACKBONES else config.backbone
    untied_head = head_is_untied(architecture, source)
    return Seq2SeqVAE.from_config(architecture, tokenizer=tokenizer, config=config, untied_head=untied_head)
