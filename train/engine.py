"""The DeepSpeed engine around a Seq2SeqVAE: config resolution, ZeRO-3 construction, param groups.

`seq2vae.model` never imports DeepSpeed; this is the one place training wraps it. Under ZeRO-3 the VAE
is built in `distributed.model_construction` (the same construction evaluation's ZeRO-3 engine uses),
so every parameter is partitioned the moment it is created (or loaded).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint.background import install_background_writer
from ..checkpoint.init_from import load_init_weights, resolve_init_from
from ..checkpoint.initial_weights import has_random_backbone, initialise, reference_backbone_weights
from ..distributed import World, model_construction, parameter_reader, zero_stage
from ..model import Seq2SeqVAE, VAEConfig, build_vae
from ..model.build import backbone_config
from ..model.invariants import check_model
from .config import TrainConfig
from .ds_config import resolved_ds_config
from .freezing import optimizer_param_groups, skip_frozen_groups
from .guarded_step import install_guarded_step


@dataclass
class Engine:
    engine: Any  # deepspeed.DeepSpeedEngine
    vae: Seq2SeqVAE  # the module the engine wraps
    groups: dict[str, list[torch.nn.Parameter]]  # vae.parameter_groups()
    optimizer: Any  # the base optimizer whose param groups carry "name" / "frozen"
    ds_config: dict[str, Any]
    zero_stage: int
    # Keeps transformers' view of the ZeRO-3 config alive for as long as the engine (see module doc).
    hf_ds_config: Any = None


def backbone_width(model: VAEConfig) -> int:
    """d_model of the backbone, read from its config only (no weights), to size DeepSpeed's buckets."""
    return backbone_config(model).d_model


def build_engine(config: TrainConfig, world: World, ds_config_path: Path | None = None) -> Engine:
    """Builds the VAE (partitioned under ZeRO-3) and its DeepSpeed engine; writes the resolved JSON.

    Every parameter starts trainable and in the optimizer, one param group per parameter-group name;
    phases then freeze groups with `freezing.set_frozen`.
    """
    import deepspeed

    # Validated before anything is built: a wrong directory should not wait for a backbone to load.
    init_source = resolve_init_from(config.model) if config.model.init_from else None
    ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))  # torchrun sets it
    ds_config = resolved_ds_config(config, world.size, backbone_width(config.model), world.device.type, ranks_per_node)
    if ds_config_path is not None and world.is_main:
        ds_config_path.write_text(json.dumps(ds_config, indent=2) + "\n")
    stage = zero_stage(ds_config)
    if world.device.type == "cuda":
        # fp32 matmuls (precision=fp32, fp32 heads) on the tensor cores as TF32: the peak MFU assumes.
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.seed)
    # Built before any ZeRO-3 context: the partition-independent source of a random backbone's weights.
    random_start = init_source is None and has_random_backbone(config.model)
    reference = reference_backbone_weights(config.model, config.seed) if random_start else None
    construction, hf_ds_config = model_construction(ds_config)
    with construction:
        vae = build_vae(config.model, pretrained_weights=init_source is None)
    if init_source is None:
        # The same initial weights on every ZeRO stage and world size (see initial_weights.py).
        initialise(vae, config.seed, stage == 3, reference)
    else:
        load_init_weights(vae, init_source, stage == 3)
        if world.is_main:  # which checkpoint of a run directory: its best-validation one, or its latest
            print(f"initial weights from {init_source.description}", flush=True)
    del reference
    groups = vae.parameter_groups()
    engine, _, _, _ = deepspeed.initialize(
        model=vae, model_parameters=optimizer_param_groups(groups, config.optim.weight_decay), config=ds_config
    )
    if config.checkpoint.asynchronous:
        install_background_writer(engine)
    optimizer = engine.basic_optimizer
    skip_frozen_groups(optimizer)
    if stage == 0:  # without ZeRO nothing would drop a step with non-finite gradients
        install_guarded_step(engine, config.optim.gradient_clipping)
    # After initialize: ZeRO-3's forward hooks gather parameters from here on (all ranks run it).
    check_model(vae, parameter_reader(stage))
    return Engine(engine, vae, groups, optimizer, ds_config, stage, hf_ds_config)


def has_gradient(parameter: torch.nn.Parameter) -> bool:
    """Whether `parameter` received a non-zero gradient in this step's backward (any ZeRO stage).

    Call on all ranks, for the same parameters in the same order, after the last backward of a step and
    before `engine.step()`: under ZeRO the gradient lives in partitions and is assembled collectively.
    """
    from deepspeed.utils import safe_get_full_grad

    if not parameter.requires_grad:  # frozen: autograd computed none (ZeRO holds zeros for it)
        return False
    gradient = safe_get_full_grad(parameter)
    return gradient is not None and bool(torch.count_nonzero(gradient))


def set_learning_rate(optimizer, lr: float) -> None:
    """The schedule's lr on trainable groups, 0 on frozen ones."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if group.get("frozen") else lr
