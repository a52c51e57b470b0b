"""Where an evaluated model's weights live: a replica per rank, or partitioned over ranks (ZeRO-3).

The choice is the planner's (`seq2vae.plan.placement`), so `seq2vae plan` and eval agree.

`seq2vae eval --placement auto|replica|zero3` applies it: `replica` loads the whole model on every
rank; `zero3` builds it under `deepspeed.zero.Init` (rank 0 reads the weights, every rank keeps 1/W
of them) and wraps it in a ZeRO-3 engine without optimizer, whose hooks gather each layer's weights
just for its forward. The harness already runs the same number of encoder, decoder and generation
calls on every rank, which is what ZeRO-3 needs (a rank that skipped a forward would leave the
others waiting in an all-gather). Results are the same either way up to float summation order
(ZeRO-3 gathers the same values).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from ..checkpoint.initial_weights import writable
from ..distributed import model_construction, parameter_reader
from ..model.backbone import pretrained_backbone
from ..model.invariants import check_model
from ..model.shape import ModelShape, model_shape
from ..model.vae import BACKBONE_SUBDIR, HEADS_FILE, Seq2SeqVAE, saved_tokenizer, saved_vae_config
from ..plan.memory import InferenceBatch
from ..plan.placement import INFERENCE_ZERO_OPTIMIZATION, PlacementError, choose_placement
from .harness import iw_samples_per_call

Placement = Literal["auto", "replica", "zero3"]
PLACEMENTS = ("auto", "replica", "zero3")
def eval_batch(
    iw_samples: int, batch_size: int, decoder_batch_size: int | None, device: torch.device, length: int
) -> InferenceBatch:
    """The largest decoder call `seq2vae eval` makes with these settings on sentences of <= `length` tokens."""
    return InferenceBatch(batch_size * iw_samples_per_call(decoder_batch_size, batch_size, iw_samples, device), length)


def saved_model_shape(model_dir: Path) -> ModelShape:
    """The planner's shape of a save_pretrained directory, from its configs alone (no weights loaded)."""
    from transformers import AutoConfig

    try:
        return model_shape(AutoConfig.from_pretrained(model_dir / BACKBONE_SUBDIR), saved_vae_config(model_dir))
    except ValueError as error:
        raise PlacementError(
            f"--placement auto cannot size {model_dir} ({error}): give --placement replica or zero3"
        ) from error


def device_memory(device: torch.device) -> int:
    """Bytes one rank may use: the GPU's memory, or on CPU the host's RAM shared by the node's ranks."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // ranks_here


def resolve_placement(requested: str, model_dir: Path, device: torch.device, world_size: int, batch: InferenceBatch) -> str:
    """The placement to use for --placement `requested`; `batch` is the evaluation's largest decoder call."""
    if requested not in PLACEMENTS:
        raise PlacementError(f"--placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
    if requested == "zero3" and world_size == 1:
        raise PlacementError("--placement zero3 needs several ranks (torchrun --nproc_per_node N)")
    if requested != "auto":
        return requested
    return auto_placement(model_dir, device_memory(device), world_size, batch)


def auto_placement(model_dir: Path, device_memory_bytes: float, world_size: int, batch: InferenceBatch) -> str:
    """--placement auto for the save_pretrained directory `model_dir`: `choose_placement` on the shape
    its configs give and the dtype its weights are stored in (no weights loaded)."""
    dtype_bytes = torch.empty((), dtype=stored_dtype(model_dir)).element_size()
    return choose_placement(saved_model_shape(model_dir), dtype_bytes, batch, device_memory_bytes, world_size)


def _inference_ds_config(dtype: torch.dtype) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,  # required by DeepSpeed's config; no training happens
        "zero_optimization": dict(INFERENCE_ZERO_OPTIMIZATION),
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
    }


def load_zero3(model_dir: str | Path):
    """The save_pretrained model at `model_dir`, partitioned over the ranks (ALL ranks call this).

    Returns (module to evaluate, engine); keep the engine alive while evaluating: it owns the hooks.
    """
    import deepspeed
    from safetensors.torch import load_file
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = saved_vae_config(model_dir)
    backbone_dir = model_dir / BACKBONE_SUBDIR
    dtype = stored_dtype(model_dir)
    ds_config = _inference_ds_config(dtype)
    construction, keep_alive = model_construction(ds_config)
    with construction:
        # The LM head as the checkpoint stores it: under zero.Init transformers would tie an untied one.
        backbone = pretrained_backbone(backbone_dir, AutoConfig.from_pretrained(backbone_dir), dtype=dtype)
        vae = Seq2SeqVAE(backbone, config, saved_tokenizer(model_dir))
    # The heads were created partitioned: each is gathered, filled on rank 0, and re-partitioned.
    heads = load_file(model_dir / HEADS_FILE)
    parameters = dict(vae.named_parameters())
    unknown = sorted(name for name in heads if name not in parameters)
    if unknown:
        raise ValueError(f"{model_dir / HEADS_FILE}: tensors {unknown} match no parameter of the model")
    for name in sorted(heads):
        with writable([parameters[name]], zero3=True) as this_rank_writes:
            if this_rank_writes:
                parameters[name].data.copy_(heads[name].to(parameters[name].dtype))
    engine, _, _, _ = deepspeed.initialize(model=vae, config=ds_config)
    engine.eval()
    engine.hf_ds_config = keep_alive  # lives as long as the engine
    check_model(engine.module, parameter_reader(3))
    return engine.module, engine


def stored_dtype(model_dir: Path) -> torch.dtype:
    """The dtype of a save_pretrained directory's backbone weights, read from a safetensors header."""
    from safetensors import safe_open

    files = sorted((model_dir / "backbone").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir / 'backbone'}: no *.safetensors weights")
    path = files[0]
    with safe_open(str(path), framework="pt") as handle:
        stored = handle.get_slice(next(iter(handle.keys()))).get_dtype()
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)
