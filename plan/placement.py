"""Where an evaluated model's weights should live: a replica per rank, or partitioned (ZeRO-3).

The estimate is the planner's inference memory (`memory.inference_bytes`: weights per rank, ZeRO-3's
gathered working set, the activations of the IW pass's largest decoder call) against the same usable
share of a device the planner assumes, so `seq2vae plan` and `seq2vae eval --placement auto` agree.
`estimate_placement` sizes both placements and takes the first that fits, a replica first (it needs
no gathers); `choose_placement` returns that choice or raises PlacementError saying what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..model.shape import ModelShape
from .memory import (
    GIB,
    InferenceBatch,
    InferenceBytes,
    ZeroSetting,
    inference_activation_bytes,
    inference_bytes,
    usable_device_bytes,
)

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


