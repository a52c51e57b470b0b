"""Where an evaluated model's weights live: a replica per rank, or partitioned over ranks (ZeRO-3).

`choose_placement(num_parameters, dtype_bytes, device_memory_bytes, world_size)` is the decision, a
pure function so a memory planner can replace or feed it. `seq2vae eval --placement auto|replica|zero3`
applies it: `replica` loads the whole model on every rank (today's behaviour); `zero3` builds it under
`deepspeed.zero.Init` (rank 0 reads the weights, every rank keeps 1/W of them) and wraps it in a
ZeRO-3 engine without optimizer, whose hooks gather each layer's weights just for its forward. The
harness already runs the same number of encoder, decoder and generation calls on every rank, which
is what ZeRO-3 needs (a rank that skipped a forward would leave the others waiting in an all-gather).
Results are the same either way up to float summation order (ZeRO-3 gathers the same values).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import torch

Placement = Literal["auto", "replica", "zero3"]
PLACEMENTS = ("auto", "replica", "zero3")
# Weights may take this share of a device; the rest is for activations, chiefly the IW pass's
# [sequences, T, V] logits (bounded by --decoder-batch-size).
WEIGHT_SHARE = 0.5
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


def choose_placement(num_parameters: int, dtype_bytes: int, device_memory_bytes: int, world_size: int) -> str:
    """"replica" when the whole model fits one device with room for activations, else "zero3" when
    1/world_size of it does; ValueError when neither (more ranks, or a smaller dtype, are needed).

    ZeRO-3 also holds one layer's gathered weights at a time (plus prefetch), small next to the 1/W
    share for the large models this is for.
    """
    weights = num_parameters * dtype_bytes
    budget = WEIGHT_SHARE * device_memory_bytes
    if weights <= budget:
        return "replica"
    if world_size > 1 and weights / world_size <= budget:
        return "zero3"
    gib = 2**30
    needed = -(-int(weights) // int(budget)) if budget > 0 else 0
    raise ValueError(
        f"the model's {weights / gib:.1f} GiB of weights do not fit {world_size} rank(s) with "
        f"{device_memory_bytes / gib:.1f} GiB each (weights may use {WEIGHT_SHARE:.0%}): run on at least {needed} ranks"
    )


def stored_size(model_dir: str | Path) -> tuple[int, int]:
    """(parameter count, bytes per parameter) of a save_pretrained directory, read from the safetensors
    headers alone (no weights loaded). Tied weights are stored, and counted, once."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).rglob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights to size the model from")
    count = total_bytes = 0
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                numel = 1
                for dim in tensor.get_shape():
                    numel *= dim
                count += numel
                total_bytes += numel * _DTYPE_BYTES.get(tensor.get_dtype(), 4)
    return count, max(1, round(total_bytes / max(count, 1)))


def device_memory(device: torch.device) -> int:
    """Bytes one rank may use: the GPU's memory, or on CPU the host's RAM shared by the node's ranks."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // ranks_here


def resolve_placement(requested: str, model_dir: Path, device: torch.device, world_size: int) -> str:
    if requested not in PLACEMENTS:
        raise ValueError(f"--placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
    if requested == "zero3" and world_size == 1:
        raise ValueError("--placement zero3 needs several ranks (torchrun --nproc_per_node N)")
    if requested != "auto":
        return requested
    num_parameters, dtype_bytes = stored_size(model_dir)
    return choose_placement(num_parameters, dtype_bytes, device_memory(device), world_size)


def _inference_ds_config(dtype: torch.dtype) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,  # required by DeepSpeed's config; no training happens
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
    }


def load_zero3(model_dir: str | Path):
    """The save_pretrained model at `model_dir`, partitioned over the ranks (ALL ranks call this).

    Returns (module to evaluate, engine); keep the engine alive while evaluating: it owns the hooks.
    """
    import deepspeed
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    from ..model.config import VAEConfig
    from ..model.vae import BACKBONE_SUBDIR, CONFIG_FILE, HEADS_FILE, Seq2SeqVAE

    model_dir = Path(model_dir)
    record = json.loads((model_dir / CONFIG_FILE).read_text())
    config = VAEConfig.from_dict(record["vae"], source=str(model_dir / CONFIG_FILE))
    backbone_dir = model_dir / BACKBONE_SUBDIR
    dtype = _stored_dtype(model_dir)
    ds_config = _inference_ds_config(dtype)
    live = HfDeepSpeedConfig(ds_config)  # noqa: F841  transformers' from_pretrained partitions while this lives
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        backbone = AutoModelForSeq2SeqLM.from_pretrained(backbone_dir, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir) if (model_dir / "tokenizer_config.json").exists() else None
        vae = Seq2SeqVAE(backbone, config, tokenizer)
    # The heads were created partitioned: each is gathered, filled on rank 0, and re-partitioned.
    heads = load_file(model_dir / HEADS_FILE)
    parameters = dict(vae.named_parameters())
    unknown = sorted(name for name in heads if name not in parameters)
    if unknown:
        raise ValueError(f"{model_dir / HEADS_FILE}: tensors {unknown} match no parameter of the model")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for name in sorted(heads):
        with deepspeed.zero.GatheredParameters([parameters[name]], modifier_rank=0):
            if rank == 0:
                parameters[name].data.copy_(heads[name].to(parameters[name].dtype))
    engine, _, _, _ = deepspeed.initialize(model=vae, config=ds_config)
    engine.eval()
    return engine.module, engine


def _stored_dtype(model_dir: Path) -> torch.dtype:
    from safetensors import safe_open

    path = sorted((model_dir / "backbone").glob("*.safetensors"))[0]
    with safe_open(str(path), framework="pt") as handle:
        stored = handle.get_slice(next(iter(handle.keys()))).get_dtype()
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)
