"""`plan_run(shape, run, layout) -> Plan`: will this training run fit this cluster, and what to change.

Plain inputs only: the model's shape (`seq2vae.model.shape`) and the run's settings as values
(`RunSettings`; `seq2vae.train.capacity` reads them from a training config). No weights, no GPU: parameter
count, per-rank model states and activations for the configured ZeRO stage and offload, host memory
per node (loading included), traffic per optimizer step and model FLOPs per token. When the run does
not fit, or fits with room to spare, `recommendation` gives the setting to use instead: the cheapest
ZeRO stage / offload that fits, the largest micro batch the global batch allows, and hpZ on multi-node
ZeRO-3.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..hardware import peak_tflops as table_peak_tflops
from ..model.flops import training_flops_per_token
from ..model.shape import ModelShape
from .communication import Traffic, step_traffic
from .memory import (
    DEVICE_RESERVED_BYTES,
    FRAGMENTATION_SHARE,
    GIB,
    HOST_OVERHEAD_PER_RANK_BYTES,
    InferenceBatch,
    ModelStateBytes,
    ZeroSetting,
    activation_bytes,
    model_state_bytes,
    usable_device_bytes,
)
from .placement import PlacementEstimate, estimate_placement

# Bytes per parameter of the weights `seq2vae eval` may get: a run directory's export (fp32, what
# `seq2vae eval --model RUN_DIR` evaluates) or `seq2vae export --dtype bf16`.
EVAL_DTYPE_BYTES = {"fp32": 4, "bf16": 2}


@dataclass(frozen=True)
class ClusterLayout:
    """The machines a run gets. `peak_tflops` is per GPU; None = look the GPU up by `gpu_name`."""

    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float = 80.0
    host_memory_gib: float = 512.0
    peak_tflops: float | None = None
    gpu_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("gpu_memory_gib", "host_memory_gib"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_gpu_bytes(self) -> int:
        return usable_device_bytes(self.gpu_memory_gib * GIB)


@dataclass(frozen=True)
class Estimate:
    """Memory of one (ZeRO setting, micro batch, checkpointing) choice on the layout."""

    zero: ZeroSetting
    micro_batch_size: int
    gradient_checkpointing: bool
    model_states: ModelStateBytes
    activation_bytes: int
    host_per_node_bytes: int
    usable_gpu_bytes: int
    host_memory_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.model_states.device_total + self.activation_bytes

    @property
    def fits_gpu(self) -> bool:
        return self.total_bytes <= self.usable_gpu_bytes

    @property
    def fits_host(self) -> bool:
        return self.host_per_node_bytes <= self.host_memory_bytes

    @property
    def fits(self) -> bool:
        return self.fits_gpu and self.fits_host


@dataclass(frozen=True)
class EvalPlacements:
    """`seq2vae eval --placement auto`'s estimate on the layout, with eval's default settings, per
    weight dtype (EVAL_DTYPE_BYTES): the same numbers eval decides with."""

    batch: InferenceBatch  # its largest decoder call
    by_dtype: dict[str, PlacementEstimate]  # EVAL_DTYPE_BYTES name -> both placements and the choice

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequences_per_decoder_call": self.batch.sequences,
            "length": self.batch.length,
            **{name: estimate.to_dict() for name, estimate in self.by_dtype.items()},
        }


def eval_placements(shape: ModelShape, layout: ClusterLayout, batch: InferenceBatch) -> EvalPlacements:
    """Where `seq2vae eval` (on the layout's GPUs) would put a model of `shape` whose largest
    decoder call is `batch`."""
    memory = layout.gpu_memory_gib * GIB
    by_dtype = {
        name: estimate_placement(shape, size, batch, memory, layout.world_size) for name, size in EVAL_DTYPE_BYTES.items()
    }
    return EvalPlacements(batch, by_dtype)


@dataclass(frozen=True)
class RunSettings:
    """What the planner needs of a training run on one layout, as plain values."""

    backbone: str  # as configured (shown in the plan)
    precision: str  # "bf16" | "fp32"
    micro_batch_size: int
    global_batch_size: int | None  # None: micro x world, no accumulation
    accumulation: int  # gradient accumulation steps on this layout's world size
    gradient_checkpointing: bool
    zero: ZeroSetting  # the run's resolved DeepSpeed config, read by ZeroSetting.from_ds_config
    source_length: int
    source_length_from: str  # where `source_length` came from (shown in the plan)
    eval_batch: InferenceBatch  # the largest decoder call `seq2vae eval` makes with its defaults


@dataclass
class Plan:
    backbone: str
    precision: str
    layout: ClusterLayout
    shape: ModelShape
    source_length: int
    source_length_from: str
    accumulation: int
    global_batch_size: int
    estimate: Estimate  # the configured setting
    traffic: Traffic
    flops_per_token: float  # training model FLOPs per source + target token
    recommendation: Estimate  # what to run (the configured setting when it is already the best)
    recommended_traffic: Traffic
    evaluation: EvalPlacements | None = None  # where `seq2vae eval` would put the trained model
    problems: list[str] = field(default_factory=list)  # what to change for the run to fit; empty = fits
    notes: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    @property
    def parameters(self) -> int:
        return self.shape.parameters

    @property
    def checkpoint_bytes(self) -> int:
        """What one save writes, all ranks together: the weights in the training precision (DeepSpeed's
        model-states file) plus the fp32 master weights and AdamW's two moments (the optimizer shards)."""
        return self.shape.parameters * ((2 if self.precision == "bf16" else 4) + 4 + 8)

    @property
    def peak_tflops(self) -> float | None:
        if self.layout.peak_tflops is not None:
            return self.layout.peak_tflops
        return table_peak_tflops(self.layout.gpu_name, self.precision) if self.layout.gpu_name else None

    def to_dict(self) -> dict[str, Any]:
        estimate, recommendation = self.estimate, self.recommendation
        return {
            "backbone": self.backbone,
            "parameters": self.parameters,
            "precision": self.precision,
            "layout": dataclasses.asdict(self.layout) | {"world_size": self.layout.world_size},
            "zero": estimate.zero.describe(),
            "source_length": self.source_length,
            "source_length_from": self.source_length_from,
            "micro_batch_size": estimate.micro_batch_size,
            "gradient_accumulation_steps": self.accumulation,
            "global_batch_size": self.global_batch_size,
            "gradient_checkpointing": estimate.gradient_checkpointing,
            "per_rank": _per_rank(self.shape, estimate, self.source_length, self.precision),
            "usable_gpu_bytes": estimate.usable_gpu_bytes,
            "host_per_node_bytes": estimate.host_per_node_bytes,
            "host_memory_bytes": estimate.host_memory_bytes,
            "communication": dataclasses.asdict(self.traffic),
            "flops_per_token": self.flops_per_token,
            "peak_tflops": self.peak_tflops,
            "fits": self.fits,
            "problems": self.problems,
            "recommendation": {
                "zero": recommendation.zero.describe(),
                "zero_stage": recommendation.zero.stage,
                "offload_optimizer": recommendation.zero.offload_optimizer,
                "offload_param": recommendation.zero.offload_param,
                "zero_hpz_partition_size": recommendation.zero.hpz_partition_size,
                "micro_batch_size": recommendation.micro_batch_size,
                "gradient_checkpointing": recommendation.gradient_checkpointing,
                "overrides": recommended_overrides(self),
                "per_rank_total_bytes": recommendation.total_bytes,
                "host_per_node_bytes": recommendation.host_per_node_bytes,
                "communication": dataclasses.asdict(self.recommended_traffic),
                "fits": recommendation.fits,
            },
            "evaluation": self.evaluation.to_dict() if self.evaluation is not None else None,
            "notes": self.notes,
            "assumptions": self.assumptions,
        }


def _per_rank(shape: ModelShape, estimate: Estimate, source_length: int, precision: str) -> dict[str, Any]:
    states = estimate.model_states
    return {
        "model_states_bytes": states.device_total,
        "parameter_bytes": states.parameters,
        "gradient_bytes": states.gradients,
        "optimizer_state_bytes": states.optimizer_states,
        "buffer_bytes": states.buffers + states.gathered,
        "gathered_parameter_bytes": states.gathered,
        "offloaded_host_bytes": states.host,
        "activation_bytes": estimate.activation_bytes,
        "activation_bytes_with_checkpointing": activation_bytes(shape, estimate.micro_batch_size, source_length, precision, True),
        "activation_bytes_without_checkpointing": activation_bytes(
            shape, estimate.micro_batch_size, source_length, precision, False
        ),
        "total_bytes": estimate.total_bytes,
    }


def host_per_node_bytes(shape: ModelShape, states: ModelStateBytes, zero: ZeroSetting, layout: ClusterLayout) -> int:
    """Peak host memory of the busiest node (node 0): process overhead plus the larger of loading and
    offloaded states. Under ZeRO-3 the backbone loads inside zero.Init, where rank 0 alone reads the
    checkpoint; otherwise every rank reads all of it before the engine moves it to its GPU."""
    checkpoint = shape.parameters * shape.checkpoint_dtype_bytes
    loading = checkpoint if zero.stage == 3 else layout.gpus_per_node * checkpoint
    offloaded = layout.gpus_per_node * states.host
    return layout.gpus_per_node * HOST_OVERHEAD_PER_RANK_BYTES + max(loading, offloaded)


def estimate(shape: ModelShape, zero: ZeroSetting, micro_batch_size: int, checkpointing: bool, source_length: int,
             precision: str, layout: ClusterLayout) -> Estimate:
    states = model_state_bytes(shape, zero, layout.world_size, precision)
    return Estimate(
        zero=zero,
        micro_batch_size=micro_batch_size,
        gradient_checkpointing=checkpointing,
        model_states=states,
        activation_bytes=activation_bytes(shape, micro_batch_size, source_length, precision, checkpointing),
        host_per_node_bytes=host_per_node_bytes(shape, states, zero, layout),
        usable_gpu_bytes=layout.usable_gpu_bytes,
        host_memory_bytes=int(layout.host_memory_gib * GIB),
    )


def _ladder(configured: ZeroSetting, layout: ClusterLayout) -> list[ZeroSetting]:
    """Settings from least to most communication / host traffic; the configured buckets are kept."""
    replace = dataclasses.replace
    hpz = layout.gpus_per_node if layout.nodes > 1 else 1
    base = replace(configured, offload_optimizer=False, offload_param=False, hpz_partition_size=1)
    ladder = [replace(base, stage=1), replace(base, stage=2), replace(base, stage=3)]
    if hpz > 1:
        ladder.insert(2, replace(base, stage=3, hpz_partition_size=hpz))
    ladder += [
        replace(base, stage=2, offload_optimizer=True),
        replace(base, stage=3, offload_optimizer=True),
        replace(base, stage=3, offload_optimizer=True, offload_param=True),
    ]
    return ladder


def _micro_batch_choices(run: RunSettings, world_size: int) -> list[int]:
    """Micro batches that keep the global batch, largest first. Without a global batch only smaller
    micro batches than configured are offered, since the global batch would change with it."""
    micro, global_batch = run.micro_batch_size, run.global_batch_size
    if global_batch is None:
        return [m for m in range(micro, 0, -1) if micro % m == 0]
    per_rank = global_batch // world_size if global_batch % world_size == 0 else 0
    return [m for m in range(per_rank, 0, -1) if per_rank % m == 0] or [micro]


def _best(shape, settings, checkpointing_choices, micro_choices, source_length, precision, layout) -> Estimate | None:
    for zero in settings:
        for checkpointing in checkpointing_choices:
            for micro in micro_choices:
                candidate = estimate(shape, zero, micro, checkpointing, source_length, precision, layout)
                if candidate.fits:
                    return candidate
    return None


def plan_run(shape: ModelShape, run: RunSettings, layout: ClusterLayout) -> Plan:
    """Plans a run of a model of `shape` with `run`'s settings on `layout`."""
    world = layout.world_size
    length, configured_zero, precision = run.source_length, run.zero, run.precision
    current = estimate(shape, configured_zero, run.micro_batch_size, run.gradient_checkpointing, length, precision, layout)

    checkpointing_choices = [run.gradient_checkpointing] + ([True] if not run.gradient_checkpointing else [])
    micro_choices = _micro_batch_choices(run, world)
    ladder = _ladder(configured_zero, layout)
    # Keep the configured stage when it fits (only dropping offload it does not need and adding hpZ);
    # otherwise climb the ladder to the first setting that fits.
    same_stage = [z for z in ladder if z.stage == configured_zero.stage]
    same_stage.sort(key=lambda z: (z.offload_optimizer or z.offload_param, -z.hpz_partition_size))
    recommendation = _best(shape, same_stage, checkpointing_choices, micro_choices, length, precision, layout)
    if recommendation is None:
        recommendation = _best(shape, ladder, checkpointing_choices, micro_choices, length, precision, layout)
    if recommendation is None:
        recommendation = estimate(shape, ladder[-1], micro_choices[-1], True, length, precision, layout)

    def traffic(zero: ZeroSetting, micro: int) -> Traffic:
        steps = run.global_batch_size // (micro * world) if run.global_batch_size else 1
        return step_traffic(shape.parameters, zero, world, layout.nodes, steps, precision)

    plan = Plan(
        backbone=run.backbone,
        precision=precision,
        layout=layout,
        shape=shape,
        source_length=length,
        source_length_from=run.source_length_from,
        accumulation=run.accumulation,
        global_batch_size=run.micro_batch_size * run.accumulation * world,
        estimate=current,
        traffic=traffic(configured_zero, run.micro_batch_size),
        flops_per_token=training_flops_per_token(shape, length),
        recommendation=recommendation,
        recommended_traffic=traffic(recommendation.zero, recommendation.micro_batch_size),
        evaluation=eval_placements(shape, layout, run.eval_batch),
    )
    plan.problems = _problems(plan)
    plan.notes = _notes(plan, ladder, checkpointing_choices, micro_choices)
    plan.assumptions = [
        f"usable GPU memory = {layout.gpu_memory_gib:g} GiB x {1 - FRAGMENTATION_SHARE:.2f} - "
        f"{DEVICE_RESERVED_BYTES / GIB:g} GiB (CUDA context, NCCL/cuBLAS workspaces, fragmentation)",
        f"host overhead {HOST_OVERHEAD_PER_RANK_BYTES / GIB:g} GiB per rank (libraries, CUDA host side, data workers)",
        f"checkpoint stored in {shape.checkpoint_dtype_bytes} bytes per parameter; loading counted whole (upper bound)",
        f"source length {length} ({run.source_length_from}); target length = source length",
    ]
    return plan


def recommended_overrides(plan: Plan) -> list[str]:
    """`key=value` training-config overrides (and DeepSpeed JSON keys) that turn the run into the recommendation."""
    recommendation, current = plan.recommendation, plan.estimate
    overrides = []
    zero = recommendation.zero
    def kind(setting: ZeroSetting) -> tuple:
        return setting.stage, setting.offload_optimizer, setting.offload_param, setting.hpz_partition_size > 1

    # Every setting the ladder offers is a packaged preset; zero3_hpz sizes hpZ to the node itself.
    preset = {
        (1, False, False, False): "zero1",
        (2, False, False, False): "zero2",
        (2, True, False, False): "zero2_offload",
        (3, False, False, False): "zero3",
        (3, False, False, True): "zero3_hpz",
        (3, True, False, False): "zero3_offload_optimizer",
        (3, True, True, False): "zero3_offload",
    }[kind(zero)]
    if kind(zero) != kind(current.zero):
        overrides.append(f"deepspeed={preset}")
    if recommendation.micro_batch_size != current.micro_batch_size:
        overrides.append(f"data.micro_batch_size={recommendation.micro_batch_size}")
    if recommendation.gradient_checkpointing != current.gradient_checkpointing:
        overrides.append(f"model.gradient_checkpointing={str(recommendation.gradient_checkpointing).lower()}")
    return overrides


def _problems(plan: Plan) -> list[str]:
    estimate, layout = plan.estimate, plan.layout
    problems = []
    fix = ", ".join(recommended_overrides(plan)) if plan.recommendation.fits else (
        "nothing tried fits: use more GPUs, GPUs with more memory, or a shorter data max_length"
    )
    if not estimate.fits_gpu:
        problems.append(
            f"per-rank GPU memory {estimate.total_bytes / GIB:.1f} GiB ({estimate.zero.describe()}, micro batch "
            f"{estimate.micro_batch_size}) exceeds the usable {layout.usable_gpu_bytes / GIB:.1f} GiB of a "
            f"{layout.gpu_memory_gib:g} GiB GPU; change: {fix}"
        )
    if not estimate.fits_host:
        problems.append(
            f"host memory {estimate.host_per_node_bytes / GIB:.1f} GiB per node exceeds {layout.host_memory_gib:g} GiB; "
            f"change: {fix}"
        )
    return problems


def _notes(plan: Plan, ladder, checkpointing_choices, micro_choices) -> list[str]:
    notes = []
    current = plan.estimate
    if current.fits and current.zero.stage > 1:
        cheaper = _best(plan.shape, [z for z in ladder if z.stage < current.zero.stage and not z.offload_optimizer],
                        checkpointing_choices, micro_choices, plan.source_length, plan.precision, plan.layout)
        traffic = cheaper and step_traffic(plan.parameters, cheaper.zero, plan.layout.world_size, plan.layout.nodes,
                                           plan.accumulation, plan.precision)
        if cheaper is not None and traffic.bytes_per_rank_per_step < plan.traffic.bytes_per_rank_per_step:
            notes.append(
                f"{cheaper.zero.describe()} also fits (micro batch {cheaper.micro_batch_size}, "
                f"{cheaper.total_bytes / GIB:.1f} GiB per rank) and moves {traffic.bytes_per_rank_per_step / GIB:.1f} GiB "
                f"per rank per step instead of {plan.traffic.bytes_per_rank_per_step / GIB:.1f} GiB"
            )
    if current.zero.offload_optimizer and not plan.recommendation.zero.offload_optimizer and plan.recommendation.fits:
        notes.append("offload is not needed on this layout: it only adds PCIe traffic and host memory")
    return notes
