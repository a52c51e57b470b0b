"""Build a Seq2SeqVAE from its typed config (the training config's `model` section)."""

from __future__ import annotations

import dataclasses

from transformers import AutoTokenizer

from seq2vae.config import ConfigError
from seq2vae.model.config import VAEConfig
from seq2vae.model.debug import DEBUG_BACKBONES, debug_backbone_config
from seq2vae.model.vae import Seq2SeqVAE


def build_vae(config: VAEConfig) -> Seq2SeqVAE:
    """Pretrained weights via `from_pretrained(config.backbone)`, or a tiny random debug backbone.

    Under ZeRO-3 call this inside `deepspeed.zero.Init` (with a live `HfDeepSpeedConfig`) so the
    backbone is partitioned as it loads.
    """
    if config.backbone in DEBUG_BACKBONES:
        if config.tokenizer is None:
            raise ConfigError(f"model.tokenizer is required with model.backbone={config.backbone!r}")
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        kind = config.backbone.removeprefix("debug-")
        return Seq2SeqVAE.from_config(debug_backbone_config(kind, tokenizer), tokenizer=tokenizer, config=config)
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return Seq2SeqVAE.from_backbone(settings.pop("backbone"), **settings)
