"""Where an evaluated model's weights live: a replica per rank, or partitioned over ranks (ZeRO-3).

The choice is made with the planner's inference-memory estimate (`seq2vae.plan.memory.inference_bytes`:
weights per rank, ZeRO-3's gathered working set, the activations of the IW pass's largest decoder
call), against the same usable share of a device the planner assumes; `seq2vae plan` reports the
same estimate for a training config, so plan and eval agree. `estimate_placement` sizes both
placements and takes the first that fits, a replica first (it needs no gathers);
`choose_placement` returns that choice or raises PlacementError saying what to change.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import UserError
from ..plan.memory import (
    GIB,
    InferenceBatch,
    InferenceBytes,
    ZeroSetting,
    inference_activation_bytes,
    inference_bytes,
    usable_device_bytes,
)
from ..plan.model_shape import ModelShape

Placement = Literal["auto", "replica", "zero3"]
PLACEMENTS = ("auto", "replica", "zero3")
# The eval engine's ZeRO section: DeepSpeed's stage-3 defaults (prefetch bucket, persistence threshold,
# reuse distance), which the estimate reads back through ZeroSetting.
INFERENCE_ZERO_OPTIMIZATION = {"stage": 3}
INFERENCE_ZERO = ZeroSetting.from_ds_config({"zero_optimization": INFERENCE_ZERO_OPTIMIZATION})
# More ranks than any job has: beyond this, partitioning is not what is missing.
MAX_RANKS = 2**16


class PlacementError(UserError, ValueError):
    """No placement fits, or --placement cannot apply; the message says what to change."""


@dataclass(frozen=True)
class PlacementEstimate:
    """Both placements of one model on one layout, and the one to use."""

    world_size: int
    usable_bytes: int  # per rank
    replica: InferenceBytes
    zero3: InferenceBytes
    placement: str | None  # "replica" or "zero3" (several ranks only); None when neither fits
    problem: str | None  # why neither fits and what to change; None when one does

    def to_dict(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "problem": self.problem,
            "usable_bytes": self.usable_bytes,
            "replica": self.replica.to_dict(),
            "zero3": self.zero3.to_dict(),
        }


def eval_batch(
    iw_samples: int, batch_size: int, decoder_batch_size: int | None, device: torch.device, length: int
) -> InferenceBatch:
    """The largest decoder call `seq2vae eval` makes with these settings on sentences of <= `length` tokens."""
    from .harness import iw_samples_per_call

    return InferenceBatch(batch_size * iw_samples_per_call(decoder_batch_size, batch_size, iw_samples, device), length)


def estimate_placement(
    shape: ModelShape, dtype_bytes: int, batch: InferenceBatch, device_memory_bytes: float, world_size: int
) -> PlacementEstimate:
    """Sizes a replica and a ZeRO-3 partition of `shape` (stored in `dtype_bytes` per parameter) on
    `world_size` ranks with `device_memory_bytes` each; picks the first that fits (see module doc)."""
    sizing = _Sizing(shape, dtype_bytes, usable_device_bytes(device_memory_bytes))
    replica, zero3 = sizing.per_rank("replica", world_size, batch), sizing.per_rank("zero3", world_size, batch)
    if replica.total <= sizing.usable:
        return PlacementEstimate(world_size, sizing.usable, replica, zero3, "replica", None)
    if world_size > 1 and zero3.total <= sizing.usable:
        return PlacementEstimate(world_size, sizing.usable, replica, zero3, "zero3", None)
    needs = f"a replica needs {replica.total / GIB:.1f} GiB per rank" + (
        f", ZeRO-3 {zero3.total / GIB:.1f} GiB" if world_size > 1 else ""
    )
    problem = (
        f"the model's {replica.weights / GIB:.1f} GiB of weights ({dtype_bytes} bytes per parameter) and the "
        f"{replica.activations / GIB:.1f} GiB of activations of {batch.sequences} sequences x {batch.length} tokens per "
        f"decoder call do not fit {world_size} rank(s) with {sizing.usable / GIB:.1f} GiB usable each ({needs}): "
        + "; or ".join(sizing.remedies(batch, world_size, device_memory_bytes))
    )
    return PlacementEstimate(world_size, sizing.usable, replica, zero3, None, problem)


@dataclass(frozen=True)
class _Sizing:
    """One model and dtype against one device's usable bytes: what fits, and what would."""

    shape: ModelShape
    dtype_bytes: int
    usable: int

    def per_rank(self, placement: str, ranks: int, batch: InferenceBatch) -> InferenceBytes:
        return inference_bytes(self.shape, placement, ranks, self.dtype_bytes, batch, INFERENCE_ZERO)

    def fewest_zero3_ranks(self, batch: InferenceBatch, more_than: int) -> int | None:
        """The fewest ranks (more than `more_than`, at least 2) a ZeRO-3 partition fits on; None
        within MAX_RANKS. Partitions only shrink as ranks are added: a binary search finds the edge."""
        def fits(ranks: int) -> bool:
            return self.per_rank("zero3", ranks, batch).total <= self.usable

        low, high = max(2, more_than + 1), MAX_RANKS
        if not fits(high):
            return None
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle + 1, high)
        return low

    def most_sequences(self, length: int, ranks: int | None) -> int:
        """The most sequences per decoder call beside the weights a rank holds on `ranks` ranks (the
        lighter placement; ZeRO-3 on ever more ranks for None). Activations grow linearly with them."""
        probe = InferenceBatch(1, length)
        zero3 = self.per_rank("zero3", ranks or MAX_RANKS, probe)
        weights = self.per_rank("replica", 1, probe).weights
        if ranks != 1:
            weights = min(weights, zero3.weights + zero3.gathered)
        return max(0, (self.usable - weights) // inference_activation_bytes(self.shape, probe, self.dtype_bytes))

    def remedies(self, batch: InferenceBatch, world_size: int, device_memory_bytes: float) -> list[str]:
        """Changes that make evaluation fit, each checked with the same estimate."""
        found = []
        ranks = self.fewest_zero3_ranks(batch, world_size)
        if ranks is not None:
            found.append(f"run on at least {ranks} ranks (ZeRO-3)")
        sequences = self.most_sequences(batch.length, world_size)
        if sequences >= 1:
            found.append(f"lower --decoder-batch-size (and --batch-size) to at most {sequences} sequences per decoder call")
        if not found:  # neither alone: both, with half the sequences that fit beside ZeRO-3's gathered weights
            sequences = self.most_sequences(batch.length, None) // 2
            ranks = self.fewest_zero3_ranks(InferenceBatch(sequences, batch.length), world_size) if sequences else None
            if ranks is not None:
                found.append(
                    f"lower --decoder-batch-size (and --batch-size) to at most {sequences} sequences per decoder call "
                    f"and run on at least {ranks} ranks (ZeRO-3)"
                )
        if self.dtype_bytes > 2:
            bf16 = estimate_placement(self.shape, 2, batch, device_memory_bytes, world_size)
            if bf16.placement is not None:
                found.append(f"evaluate bf16 weights (seq2vae export --dtype bf16: {bf16.placement})")
        return found or ["use devices with more memory"]


def choose_placement(
    shape: ModelShape, dtype_bytes: int, batch: InferenceBatch, device_memory_bytes: float, world_size: int
) -> str:
    """"replica" when the whole model and the activations fit one device, else "zero3" when a
    partition does; PlacementError naming what to change (ranks, decoder batch) when neither."""
    estimate = estimate_placement(shape, dtype_bytes, batch, device_memory_bytes, world_size)
    if estimate.placement is None:
        raise PlacementError(estimate.problem)
    return estimate.placement


def saved_model_shape(model_dir: Path) -> ModelShape:
    """The planner's shape of a save_pretrained directory, from its configs alone (no weights loaded)."""
    from transformers import AutoConfig

    from ..model.vae import BACKBONE_SUBDIR, saved_vae_config
    from ..plan.model_shape import model_shape

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
    from transformers import AutoModelForSeq2SeqLM
    from transformers.integrations import HfDeepSpeedConfig

    from ..model.vae import BACKBONE_SUBDIR, HEADS_FILE, Seq2SeqVAE, saved_tokenizer, saved_vae_config

    model_dir = Path(model_dir)
    config = saved_vae_config(model_dir)
    backbone_dir = model_dir / BACKBONE_SUBDIR
    dtype = stored_dtype(model_dir)
    ds_config = _inference_ds_config(dtype)
    live = HfDeepSpeedConfig(ds_config)  # noqa: F841  transformers' from_pretrained partitions while this lives
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        backbone = AutoModelForSeq2SeqLM.from_pretrained(backbone_dir, dtype=dtype)
        vae = Seq2SeqVAE(backbone, config, saved_tokenizer(model_dir))
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
