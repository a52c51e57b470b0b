"""A training config as the planner's plain inputs: `plan_training_run(config, layout) -> Plan`.

The planner (`seq2vae.plan`) knows shapes, bytes and FLOPs; this module reads what it needs from a
`TrainConfig`: the backbone's config (no weights), the resolved DeepSpeed config the engine would run
on that layout, the shards' source length, and evaluation's largest decoder call.
"""

from __future__ import annotations

import torch

from ..data.shards import load_meta
from ..evaluation import EvalConfig, eval_batch
from ..model.build import backbone_config as read_backbone_config
from ..model.shape import model_shape
from ..plan import ClusterLayout, Plan, RunSettings, ZeroSetting, plan_run
from .config import TrainConfig, gradient_accumulation_steps
from .ds_config import resolved_ds_config

# Source length assumed when the shard directory's meta.json cannot be read.
DEFAULT_SOURCE_LENGTH = 256


def source_length(config: TrainConfig, given: int | None) -> tuple[int, str]:
    """(source length in tokens, where it came from): `given`, else the shards' max_length."""
    if given is not None:
        return given, "given"
    try:
        return int(load_meta(config.data.train)["max_length"]), f"{config.data.train}/meta.json max_length"
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_SOURCE_LENGTH, f"default {DEFAULT_SOURCE_LENGTH} (no readable meta.json in data.train)"


def plan_training_run(config: TrainConfig, layout: ClusterLayout, given_source_length: int | None = None,
                      backbone_config=None) -> Plan:
    """Plans `config` on `layout`. The source length defaults to the shards' max_length.

    `backbone_config` (a transformers config) skips reading it from `config.model.backbone`.
    Raises ConfigError / ValueError naming the key for configs that cannot run at all (a global batch
    that does not divide, an unknown DeepSpeed preset, a backbone family the planner does not know).
    """
    if backbone_config is None:
        backbone_config = read_backbone_config(config.model)
    shape = model_shape(backbone_config, config.model)
    world = layout.world_size
    length, length_from = source_length(config, given_source_length)
    # The planner plans GPU runs.
    ds_config = resolved_ds_config(config, world, shape.d_model, "cuda", layout.gpus_per_node)
    defaults = EvalConfig()
    run = RunSettings(
        backbone=config.model.backbone,
        precision=config.precision,
        micro_batch_size=config.data.micro_batch_size,
        global_batch_size=config.data.global_batch_size,
        accumulation=gradient_accumulation_steps(config.data, world),
        gradient_checkpointing=config.model.gradient_checkpointing,
        zero=ZeroSetting.from_ds_config(ds_config),
        source_length=length,
        source_length_from=length_from,
        eval_batch=eval_batch(
            defaults.iw_samples, defaults.batch_size, defaults.decoder_batch_size, torch.device("cuda"), length
        ),
    )
    return plan_run(shape, run, layout)
