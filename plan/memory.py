"""Bytes per rank and per node for one ZeRO setting, following DeepSpeed 0.19.8's own allocations.

Model states, for P parameters on W data-parallel ranks, p = 2 (bf16) or 4 (fp32) bytes per parameter,
gradients accumulated in fp32 (`data_types.grad_accum_dtype`), AdamW (two fp32 moments):

    stage 1, bf16 (engine picks BF16_Optimizer): p P params + p P bf16 gradients (kept allocated:
        without `bf16.immediate_grad_update` they are zeroed, not freed) + 4 P fp32 gradient buffer
        (full size, `fp32_groups_gradients_flat`) + 4 P/W fp32 master partition + 8 P/W moments
    stage 1, fp32: p P params + 4 P gradients (param.grad) + 4 P/W master + 8 P/W moments
    stage 0 (fp32 only; `single`, what `deepspeed: auto` runs on one fp32 rank): 4 P params (their
        own masters) + 4 P gradients (param.grad) + 8 P moments, on every rank
    stage 2 (stage_1_and_2.py): p P params + 4 P/W fp32 gradient partition + 4 P/W master + 8 P/W
        moments + reduce buckets (`reduce_bucket_size` elements in p bytes, two with overlap_comm)
    stage 3 (stage3.py): p sum_i ceil(P_i/W) parameter partitions + p P_persist persistent
        parameters (numel <= stage3_param_persistence_threshold, kept whole on every rank) +
        4 sum_i ceil(P_i/W) fp32 gradient partitions (`grad_partitions_flat_buffer`) + 4 (master)
        + 8 (moments) per partitioned element + one reduce bucket; while running, gathered
        parameters (below)

Offloading the optimizer moves master, moments and (stage 2/3) the fp32 gradient partition to host
memory; offloading parameters (stage 3) moves the parameter partitions there too.

Gathered parameters under stage 3 (partitioned_param_coordinator.py): a parameter is released after
its module runs unless it is used again within `stage3_max_reuse_distance` elements, and prefetching
fetches up to `stage3_prefetch_bucket_size` ahead; the working set is bounded by
min(P, max_reuse_distance + largest module) + prefetch bucket, in p bytes.

Inference (`seq2vae eval`, no gradients, no optimizer), with p the stored weights' bytes per parameter:
    replica: p P on every rank
    ZeRO-3: p sum_i ceil(P_i/W) partitions + p P_persist persistent parameters + the gathered working
        set above (the eval engine runs with DeepSpeed's default stage-3 settings)
plus the activations of the largest forward, the IW pass's decoder call (`inference_activation_bytes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..model.shape import ModelShape

GIB = 2**30
# Of each device's memory, what tensors cannot use: the CUDA context, NCCL and cuBLAS workspaces (a
# fixed part) and allocator fragmentation (a share). Stated in every plan.
DEVICE_RESERVED_BYTES = 2 * GIB
FRAGMENTATION_SHARE = 0.10
# Host memory a training process uses beyond the tensors counted here: the CUDA context's host side,
# PyTorch/DeepSpeed/NCCL libraries, the data loader and its workers. A rounded figure, stated as an
# assumption in every plan.
HOST_OVERHEAD_PER_RANK_BYTES = 4 * GIB


def usable_device_bytes(device_memory_bytes: float) -> int:
    """What tensors may use of a device with `device_memory_bytes`: less the reserve and fragmentation."""
    return int(device_memory_bytes * (1 - FRAGMENTATION_SHARE) - DEVICE_RESERVED_BYTES)


@dataclass(frozen=True)
class ZeroSetting:
    """The engine settings that decide memory and traffic (read from a resolved DeepSpeed config)."""

    stage: int
    offload_optimizer: bool = False
    offload_param: bool = False
    overlap_comm: bool = False
    reduce_bucket_size: int = 500_000_000
    prefetch_bucket_size: int = 50_000_000
    persistence_threshold: int = 100_000
    max_reuse_distance: int = 1_000_000_000
    hpz_partition_size: int = 1

    @classmethod
    def from_ds_config(cls, ds_config: dict[str, Any]) -> "ZeroSetting":
        zero = ds_config.get("zero_optimization", {})

        def offloaded(key: str) -> bool:
            return (zero.get(key) or {}).get("device", "none") not in ("none", None)

        return cls(
            stage=int(zero.get("stage", 0)),
            offload_optimizer=offloaded("offload_optimizer"),
            offload_param=offloaded("offload_param"),
            overlap_comm=bool(zero.get("overlap_comm", False)),
            reduce_bucket_size=int(zero.get("reduce_bucket_size", 500_000_000)),
            prefetch_bucket_size=int(zero.get("stage3_prefetch_bucket_size", 50_000_000)),
            persistence_threshold=int(zero.get("stage3_param_persistence_threshold", 100_000)),
            max_reuse_distance=int(zero.get("stage3_max_reuse_distance", 1_000_000_000)),
            hpz_partition_size=int(zero.get("zero_hpz_partition_size", 1)),
        )

    def describe(self) -> str:
        offload = [name for name, on in (("optimizer", self.offload_optimizer), ("param", self.offload_param)) if on]
        text = f"ZeRO-{self.stage}" + (f" + offload {'+'.join(offload)}" if offload else "")
        return text + (f", hpZ {self.hpz_partition_size}" if self.hpz_partition_size > 1 else "")


@dataclass(frozen=True)
class ModelStateBytes:
    """Per-rank bytes of the model states, split by what holds them and where."""

    parameters: int
    gradients: int
    optimizer_states: int  # fp32 master partition + AdamW moments
    buffers: int  # reduce buckets, stage-3 persistent parameters and hpZ secondary partition
    host: int  # what offloading puts in host memory, per rank
    gathered: int = 0  # stage 3: parameters gathered while a step runs (released between steps)

    @property
    def device_total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.buffers + self.gathered

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "device_total": self.device_total}


def stage3_partition_elements(shape: ModelShape, world_size: int) -> int:
    """Elements of this rank's parameter partitions: every parameter is split on its own, padded."""
    return sum(math.ceil(size / world_size) for size in shape.parameter_sizes)


def persistent_elements(shape: ModelShape, threshold: int) -> int:
    return sum(size for size in shape.parameter_sizes if size <= threshold)


def stage3_gathered_elements(shape: ModelShape, zero: ZeroSetting) -> int:
    """Parameters gathered at once while a stage-3 forward runs: what stays gathered for reuse within
    `max_reuse_distance`, the module running, and the prefetch bucket; never more than the model."""
    total = shape.parameters
    return min(total, min(total, zero.max_reuse_distance + shape.largest_module_parameters) + zero.prefetch_bucket_size)


def model_state_bytes(shape: ModelShape, zero: ZeroSetting, world_size: int, precision: str) -> ModelStateBytes:
    """Per-rank model-state bytes of `shape` under `zero` on `world_size` ranks (see module doc)."""
    p_bytes = 2 if precision == "bf16" else 4
    total = shape.parameters
    if zero.stage == 0:
        if precision == "bf16":
            raise ValueError("zero_optimization.stage 0 runs fp32 only (train/ds_config.py refuses bf16)")
        return ModelStateBytes(4 * total, 4 * total, 8 * total, 0, 0)
    if zero.stage in (1, 2):
        partition = math.ceil(total / world_size)
        parameters = p_bytes * total
        if zero.stage == 1:
            # bf16: BF16_Optimizer keeps the bf16 .grad tensors next to its fp32 accumulation buffer.
            gradients = 4 * total + (p_bytes * total if precision == "bf16" and not zero.offload_optimizer else 0)
        else:
            gradients = 4 * partition
        optimizer = (4 + 8) * partition
        buckets = 0 if zero.stage == 1 else p_bytes * zero.reduce_bucket_size * (2 if zero.overlap_comm else 1)
        host = 0
        if zero.offload_optimizer:
            host += optimizer + (gradients if zero.stage == 2 else 0)
            gradients = gradients if zero.stage == 1 else 0
            optimizer = 0
        return ModelStateBytes(parameters, gradients, optimizer, buckets, host)
    if zero.stage != 3:
        raise ValueError(f"zero_optimization.stage {zero.stage}: the planner covers stages 0, 1, 2 and 3")
    partition = stage3_partition_elements(shape, world_size)
    parameters = p_bytes * partition
    persistent = p_bytes * persistent_elements(shape, zero.persistence_threshold)
    gradients = 4 * partition
    optimizer = (4 + 8) * partition
    gathered_bytes = p_bytes * stage3_gathered_elements(shape, zero)
    buffers = p_bytes * zero.reduce_bucket_size + persistent
    if zero.hpz_partition_size > 1:
        # hpZ keeps a secondary copy of the parameters partitioned over the node's GPUs only.
        buffers += p_bytes * math.ceil(total / zero.hpz_partition_size)
    host = 0
    if zero.offload_optimizer:
        host += gradients + optimizer
        gradients = optimizer = 0
    if zero.offload_param:
        host += parameters
        parameters = 0
    return ModelStateBytes(parameters, gradients, optimizer, buffers, host, gathered_bytes)


# What each FFN activation keeps for backward, in tensors of the FFN's width (the activation's share
# only; the FFN adds the second projection's output when gated and the input of the output matrix):
# relu keeps its output, which a gated FFN's product keeps anyway; gelu / gelu_pytorch_tanh / silu
# keep their input and their output is kept by the product; transformers' `gelu_new` is written as
# several elementwise ops (x^3, tanh, 1 + tanh, 0.5 x (..)) and keeps four tensors.
_OUTPUT_SAVING_ACTIVATIONS = ("relu",)
_MULTI_OP_ACTIVATIONS = {"gelu_new": 4, "gelu_fast": 4}


def _ffn_width_tensors(activation: str, gated: bool) -> int:
    """Tensors of width F (d_ff) one FFN keeps for backward, dropout masks apart."""
    kept = _MULTI_OP_ACTIVATIONS.get(activation, 1)  # the activation's own
    if gated:
        # + the second projection's output, + the activation's output (kept by the product) unless the
        # activation already keeps it (relu)
        kept += 1 + (0 if activation in _OUTPUT_SAVING_ACTIVATIONS else 1)
    return kept + 1  # + the output matrix's input


@dataclass(frozen=True)
class ActivationBytes:
    """Activations kept for backward, split as `plan.saved_tensors` measures them."""

    encoder_layer: int  # one encoder layer, all of it (what a checkpointed layer holds while recomputed)
    decoder_layer: int
    layers: int  # every layer (with checkpointing: their inputs plus one layer recomputed)
    outside: int  # embeddings, final norms, LM head and loss

    @property
    def total(self) -> int:
        return self.layers + self.outside


def activation_bytes(
    shape: ModelShape, micro_batch_size: int, source_length: int, precision: str, checkpointing: bool, device: str = "cuda"
) -> int:
    """Bytes of `activation_breakdown` in all."""
    return activation_breakdown(shape, micro_batch_size, source_length, precision, checkpointing, device).total


def activation_breakdown(
    shape: ModelShape, micro_batch_size: int, source_length: int, precision: str, checkpointing: bool, device: str = "cuda"
) -> ActivationBytes:
    """Activations kept for backward, per rank, at `micro_batch_size` sentences of `source_length` tokens.

    Derived from what each operation saves (checked against `plan.saved_tensors` measurements on CPU,
    bench/bench_plan.py). Per layer and token, with b activation bytes (2 bf16, 4 fp32), m bytes per
    dropout-mask element (CUDA's fused dropout keeps a bool mask: 1; the CPU kernel a mask in the
    activation dtype: b) and q = 1 where the backbone has dropout, else 0:
        T5 RMS norm (before each sublayer): its input, the normed and the weighted output 3bD, the
            rsqrt 4 bytes, and, below fp32, the fp32 copy its variance is computed from (4D);
        BART LayerNorm (after each sublayer): its input bD, mean and rstd (8 bytes); the sublayer's
            input bD;
        self-attention: q, k, v and the attention output 4bA, the output's dropout mask qmD; SDPA's
            fp32 log-sum-exp 4H where the kernel is a fused one. T5 passes its position bias as an
            additive mask, which SDPA cannot fuse: on CUDA the memory-efficient kernel keeps the
            [B,H,L,L] bias each layer builds (b bytes an element); on CPU the math kernel keeps the
            softmax, its dropout mask and the dropped probabilities ((2b + qm) per element);
        FFN: `_ffn_width_tensors` x bF, its inner dropout mask mF, the output's dropout mask qmD;
        decoder cross-attention (the VAE's M memory states as keys and values): q and output 2bA plus
            the score terms above over M keys.
    Outside the layers: token ids and labels (8 bytes each), the embeddings' dropout masks, each stack's
    final norm, the LM head's input bD (T5 with a tied head: also its rescaled copy) and the loss's fp32
    log-softmax 4V (the logits themselves are not kept: the head's backward needs only its input).
    With activation checkpointing each layer keeps only its input (bD per token) and one layer's
    activations are live again while it is recomputed.
    """
    b = 2 if precision == "bf16" else 4
    q = 1 if shape.dropout > 0 else 0
    m = (1 if device == "cuda" else b) * q
    d, a, f, h, v = shape.d_model, shape.attention_width, shape.d_ff, shape.num_heads, shape.vocab_size
    batch, length = micro_batch_size, source_length
    tokens = batch * length  # source tokens = target tokens
    memory = shape.memory_states
    t5 = shape.family == "t5"

    def attention_core(queries_per_token: int, keys: int) -> int:
        """q, k, v, output and the score terms of one attention over `keys` keys (the whole batch):
        fused kernels keep q k v in b bytes and a log-sum-exp; CPU's math kernel (T5's bias) computes in
        fp32 and keeps fp32 q, k, v and the softmax (with dropout also its mask and the dropped copy)."""
        kv_tokens = batch * keys
        if t5 and device != "cuda":
            return (tokens * (4 * a * queries_per_token + b * a) + kv_tokens * 8 * a
                    + batch * h * length * keys * 4 * (1 + 2 * q))
        fused = tokens * (b * a * queries_per_token + b * a + 4 * h) + kv_tokens * 2 * b * a
        return fused + (batch * h * length * keys * b if t5 else 0)  # the bias SDPA's efficient kernel keeps

    if t5:
        norm = 3 * b * d + 4 + (4 * d if b < 4 else 0)
    else:
        norm = 2 * b * d + 8  # the sublayer's input and the LayerNorm's input, mean and rstd
    ffn_inner = f * (1 if shape.ffn_dropout > 0 else 0) * (1 if device == "cuda" else b)
    attention = tokens * (norm + m * d) + attention_core(1, length)
    ffn = tokens * (norm + _ffn_width_tensors(shape.activation, shape.gated_ffn) * b * f + ffn_inner + m * d)
    cross = tokens * (norm + m * d) + batch * memory * b * d + attention_core(1, memory)
    encoder_layer = attention + ffn
    decoder_layer = attention + cross + ffn
    if checkpointing:
        layers = tokens * b * d * (shape.encoder_layers + shape.decoder_layers) + max(encoder_layer, decoder_layer)
    else:
        layers = shape.encoder_layers * encoder_layer + shape.decoder_layers * decoder_layer
    final_norms = 2 * tokens * (norm if t5 else 8 + b * d)
    embeddings = 2 * tokens * (8 + m * d)  # token ids, dropout masks
    head_input = b * d * (2 if t5 and shape.tied_lm_head else 1)
    lm_head = tokens * (head_input + 4 * v + 8 + m * d)  # + labels, + the final dropout mask
    return ActivationBytes(encoder_layer, decoder_layer, layers, final_norms + embeddings + lm_head)


@dataclass(frozen=True)
class InferenceBatch:
    """The largest forward an evaluation runs: one decoder call of the importance-weighted pass."""

    sequences: int  # sentences x importance samples in one decoder call
    length: int  # tokens of the longest sequence (target length = source length)


@dataclass(frozen=True)
class InferenceBytes:
    """Per-rank bytes of evaluating a model (no gradients, no optimizer)."""

    weights: int  # replica: every parameter; ZeRO-3: this rank's partitions + the persistent parameters
    gathered: int  # ZeRO-3: parameters gathered while a forward runs (0 for a replica)
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gathered + self.activations

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def inference_activation_bytes(shape: ModelShape, batch: InferenceBatch, dtype_bytes: int) -> int:
    """Peak bytes of one no-grad decoder call on `batch.sequences` x `batch.length` tokens.

    Without backward nothing is kept between layers, so the peak is the larger of one layer's live
    tensors and the LM head's. Per token, with b = `dtype_bytes` and scaled-dot-product attention (as
    in `activation_bytes`; no score matrix):
        layer: residual input, normed input and output 3bD, plus the larger of attention (q, k, v,
            context 4bA; cross-attention's q and context are fewer) and the FFN (gated 3bF: both
            input projections and their product; else 2bF);
        LM head: the final hidden state bD, the logits bV, their fp32 copy in `sequence_nll` (4V,
            unless b is 4 already) and cross-entropy's fp32 log-softmax (4V).
    The encoder pass and greedy generation run --batch-size sentences, never more than a decoder
    call's sequences, through narrower tensors (no [T, V] logits), so this call bounds them too.
    """
    b = dtype_bytes
    d, a, f, v = shape.d_model, shape.attention_width, shape.d_ff, shape.vocab_size
    layer = 3 * b * d + max(4 * b * a, (3 if shape.gated_ffn else 2) * b * f)
    lm_head = b * d + v * (b + (4 if b < 4 else 0) + 4)
    return batch.sequences * batch.length * max(layer, lm_head)


def inference_bytes(
    shape: ModelShape, placement: str, world_size: int, dtype_bytes: int, batch: InferenceBatch, zero: ZeroSetting
) -> InferenceBytes:
    """Per-rank bytes of evaluating `shape` as a "replica" or partitioned ("zero3", settings `zero`)
    over `world_size` ranks, in `dtype_bytes` per parameter (see module doc)."""
    activations = inference_activation_bytes(shape, batch, dtype_bytes)
    if placement == "replica":
        return InferenceBytes(dtype_bytes * shape.parameters, 0, activations)
    if placement != "zero3":
        raise ValueError(f"placement {placement!r}: the planner knows replica and zero3")
    partitioned = stage3_partition_elements(shape, world_size) + persistent_elements(shape, zero.persistence_threshold)
    return InferenceBytes(dtype_bytes * partitioned, dtype_bytes * stage3_gathered_elements(shape, zero), activations)
