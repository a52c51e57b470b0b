"""DeepSpeed config resolution: the packaged JSON templates hold `"auto"` where the trainer decides.

DeepSpeed resolves no `"auto"` itself (the Hugging Face Trainer does, for its own users) and ignores
misspelled top-level keys silently, so `resolve_ds_config` does both jobs: it fills every `"auto"`
from the model width and the training config, checks batch = micro x accumulation x world, and
rejects keys DeepSpeed does not know, naming them.
"""

from __future__ import annotations

import copy
import difflib
import json
import typing
from pathlib import Path
from typing import Any

from ..errors import UserError
from .config import OptimConfig, TrainConfig, gradient_accumulation_steps

PACKAGED_DIR = Path(__file__).resolve().parent.parent / "ds_configs"

# Top-level keys DeepSpeed 0.19 reads (deepspeed/runtime/config.py and the feature configs it parses).
# None = not checked below this key; a dict = the known sub-keys; "zero"/"bf16"/"fp16" = checked
# against DeepSpeed's own pydantic models (which forbid unknown keys, but only when the engine starts).
_ADAM_PARAMS = {k: None for k in ("lr", "betas", "eps", "weight_decay", "adam_w_mode", "torch_adam", "bias_correction",
                                  "amsgrad", "fused", "foreach", "fp32_optimizer_states")}
TOP_LEVEL_SCHEMA: dict[str, Any] = {
    "train_batch_size": None,
    "train_micro_batch_size_per_gpu": None,
    "gradient_accumulation_steps": None,
    "gradient_clipping": None,
    "optimizer": {"type": None, "params": _ADAM_PARAMS, "legacy_fusion": None},
    "scheduler": {"type": None, "params": None},
    "zero_optimization": "zero",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "data_types": {"grad_accum_dtype": None},
    "zero_allow_untested_optimizer": None,
    "zero_force_ds_cpu_optimizer": None,
    "steps_per_print": None,
    "wall_clock_breakdown": None,
    "memory_breakdown": None,
    "dump_state": None,
    "prescale_gradients": None,
    "gradient_predivide_factor": None,
    "communication_data_type": None,
    "seq_parallel_communication_data_type": None,
    "disable_allgather": None,
    "activation_checkpointing": {
        k: None
        for k in (
            "partition_activations", "contiguous_memory_optimization", "cpu_checkpointing", "number_checkpoints",
            "synchronize_checkpoint_boundary", "profile",
        )
    },
    "flops_profiler": None,
    "comms_logger": None,
    "tensorboard": None,
    "wandb": None,
    "csv_monitor": None,
    "aio": None,
    "checkpoint": {k: None for k in ("tag_validation", "load_universal", "use_node_local_storage", "parallel_write")},
    "dataloader_drop_last": None,
    "elasticity": None,
    "autotuning": None,
    "compile": None,
    "torch_autocast": None,
    "sparse_gradients": None,
    "use_data_before_expert_parallelism": None,
    "log_level": None,
}

# Rules for "auto" under zero_optimization, as the Hugging Face Trainer resolves them (transformers
# integrations/deepspeed.py; DeepSpeed itself does not), d = d_model.
_BUCKET_RULES = {
    "reduce_bucket_size": lambda d: d * d,
    "stage3_prefetch_bucket_size": lambda d: int(0.9 * d * d),
    "stage3_param_persistence_threshold": lambda d: 10 * d,
}
# On GPUs d^2 elements (1M for d_model 1024) is far below the message size NCCL needs for full bus
# bandwidth: a 780M-parameter backbone would reduce in ~750 launches per backward. 50M elements
# (200 MB of fp32 gradients, two buckets with overlap_comm) takes 16; DeepSpeed's own default is 500M.
GPU_REDUCE_BUCKET_ELEMENTS = 50_000_000


# `deepspeed: auto` (the default): ZeRO-2, except on one fp32 rank, which has nothing to partition and
# runs stage 0 (`single`: 1.23x-1.34x the speed of ZeRO-2, ~160 MiB less peak RSS, bench/RESULTS.md). One
# bf16 rank stays on ZeRO-2: DeepSpeed 0.19.8 has no stage-0 bf16 with fp32 gradient accumulation, and
# its other bf16 path, BF16_Optimizer (stage 1), held more memory on CPU at a speed that did not reproduce.
AUTO_PRESET = "auto"
DEFAULT_PRESET = "zero2"
SINGLE_RANK_FP32_PRESET = "single"


class DeepSpeedConfigError(UserError, ValueError):
    """A DeepSpeed JSON mistake; the message names the file and the dotted key."""


def preset_for(name_or_path: str, world_size: int, precision: str) -> str:
    """The preset `deepspeed: auto` stands for on `world_size` ranks at `precision`; anything else as given."""
    if name_or_path != AUTO_PRESET:
        return name_or_path
    return SINGLE_RANK_FP32_PRESET if world_size == 1 and precision == "fp32" else DEFAULT_PRESET


def load_ds_template(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A bare name ("zero2") resolves to the packaged ds_configs/zero2.json; anything else is a path.

    Returns (the parsed JSON, where it came from).
    """
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PACKAGED_DIR / f"{name_or_path}.json"
        if not path.is_file():
            choices = ", ".join([AUTO_PRESET, *sorted(p.stem for p in PACKAGED_DIR.glob("*.json"))])
            raise DeepSpeedConfigError(f"key 'deepspeed': no packaged config {name_or_path!r}; choices: {choices}")
    if not path.is_file():
        raise DeepSpeedConfigError(f"key 'deepspeed': file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text()), str(path)
    except json.JSONDecodeError as error:
        raise DeepSpeedConfigError(f"{path}: not valid JSON: {error}") from None


def _pydantic_schema(model: type) -> dict[str, Any]:
    """Known keys of a DeepSpeed pydantic config model (names and aliases), nested models included."""
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    schema: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        inner = None
        for candidate in (info.annotation, *typing.get_args(info.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, DeepSpeedConfigModel):
                inner = _pydantic_schema(candidate)
        schema[name] = inner
        if info.alias:
            schema[info.alias] = inner
    return schema


def _section_schema(kind: str) -> dict[str, Any]:
    if kind == "zero":
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        return _pydantic_schema(DeepSpeedZeroConfig)
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config

    return _pydantic_schema(DeepSpeedBF16Config if kind == "bf16" else DeepSpeedFP16Config)


def check_known_keys(config: dict[str, Any], source: str, schema: Any = None, prefix: str = "") -> None:
    """Raises DeepSpeedConfigError for the first key DeepSpeed would not read (e.g. a typo)."""
    schema = TOP_LEVEL_SCHEMA if schema is None and not prefix else schema
    if isinstance(schema, str):
        schema = _section_schema(schema)
    if schema is None or not isinstance(config, dict):
        return
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise DeepSpeedConfigError(
                f"{source}: unknown DeepSpeed key '{dotted}'{hint}; DeepSpeed would silently ignore it"
            )
        if schema[key] is not None:
            check_known_keys(value, source, schema[key], dotted + ".")


def _find_auto(config: Any, prefix: str = "") -> list[str]:
    if isinstance(config, dict):
        return [key for k, v in config.items() for key in _find_auto(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if config == "auto" else []


def _fill(section: dict[str, Any], key: str, value: Any, source: str, dotted: str) -> None:
    """Sets `"auto"` (or a missing key) to `value`; an explicit value must agree with it."""
    current = section.get(key, "auto")
    if current == "auto":
        section[key] = value
    elif current != value:
        raise DeepSpeedConfigError(
            f"{source}: '{dotted}' is {current!r} but the training config implies {value!r}; "
            f"set it to \"auto\" (or remove it) and size it from the training config"
        )


def resolve_ds_config(
    template: dict[str, Any],
    *,
    d_model: int,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    optim: OptimConfig,
    precision: str,
    source: str = "ds_config",
    device_type: str = "cpu",
    ranks_per_node: int | None = None,
) -> dict[str, Any]:
    """Fills a DeepSpeed template's `"auto"` values. Pure: returns a new dict.

    Args:
        template: parsed DeepSpeed JSON, possibly with `"auto"` values.
        d_model: backbone width D; sizes the ZeRO buckets (reduce D^2, at least
            GPU_REDUCE_BUCKET_ELEMENTS on CUDA; stage-3 prefetch 0.9 D^2, stage-3 persistence threshold 10 D).
        micro_batch_size, gradient_accumulation_steps, world_size: the batch geometry;
            train_batch_size = micro x accumulation x world.
        optim: AdamW hyper-parameters and gradient clipping.
        precision: "bf16" enables DeepSpeed's bf16; "fp32" disables it. Gradients accumulate in fp32.
        source: file name used in error messages.
        device_type: "cuda" or "cpu"; `zero_optimization.overlap_comm: "auto"` is on for CUDA only (it
            overlaps NCCL on a side stream with backward; CPU ranks have no streams to overlap).
        ranks_per_node: ranks on one node; `zero_optimization.zero_hpz_partition_size: "auto"` becomes
            it on a multi-node world (hpZ: backward all-gathers stay inside the node), 1 otherwise; an
            absent or "auto" `communication_data_type` becomes "fp32" on a multi-node bf16 world
            (gradients summed in fp32), DeepSpeed's default (the model dtype) otherwise.
    Raises:
        DeepSpeedConfigError naming the key: unknown keys, explicit values contradicting the training
        config, fp16 (T5 overflows in it), a DeepSpeed scheduler (the trainer drives the lr), an
        optimizer other than Adam/AdamW, or an `"auto"` without a rule.
    """
    check_known_keys(template, source)
    config = copy.deepcopy(template)
    _fill(config, "train_micro_batch_size_per_gpu", micro_batch_size, source, "train_micro_batch_size_per_gpu")
    _fill(config, "gradient_accumulation_steps", gradient_accumulation_steps, source, "gradient_accumulation_steps")
    _fill(config, "train_batch_size", micro_batch_size * gradient_accumulation_steps * world_size, source, "train_batch_size")
    if config["train_batch_size"] != micro_batch_size * gradient_accumulation_steps * world_size:
        raise DeepSpeedConfigError(f"{source}: train_batch_size must equal micro x accumulation x world")
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = optim.gradient_clipping

    optimizer = config.setdefault("optimizer", {"type": "AdamW", "params": {}})
    if optimizer.get("type") not in ("AdamW", "Adam"):
        raise DeepSpeedConfigError(f"{source}: 'optimizer.type' must be AdamW or Adam, got {optimizer.get('type')!r}")
    params = optimizer.setdefault("params", {})
    resolved_adam = {"lr": optim.lr, "betas": list(optim.betas), "eps": optim.eps, "weight_decay": optim.weight_decay}
    for key, value in resolved_adam.items():
        if params.get(key, "auto") == "auto":
            params[key] = value
    if "scheduler" in config:
        raise DeepSpeedConfigError(
            f"{source}: 'scheduler': remove it; the trainer sets the learning rate from optim.schedule"
        )
    if config.get("fp16", {}).get("enabled") not in (None, False):
        raise DeepSpeedConfigError(f"{source}: 'fp16.enabled': fp16 is not supported (T5 overflows); use precision=bf16")

    bf16 = config.setdefault("bf16", {})
    _fill(bf16, "enabled", precision == "bf16", source, "bf16.enabled")
    data_types = config.setdefault("data_types", {})
    if data_types.get("grad_accum_dtype", "auto") == "auto":
        data_types["grad_accum_dtype"] = "fp32"

    zero = config.setdefault("zero_optimization", {"stage": 0})
    if zero.get("stage", 0) == 0 and precision == "bf16":
        raise DeepSpeedConfigError(
            f"{source}: 'zero_optimization.stage' 0 with precision=bf16: DeepSpeed 0.19.8 accumulates stage-0 bf16 "
            "gradients in bf16 only; use deepspeed=auto (ZeRO-2 in bf16) or zero1 (DeepSpeed's BF16_Optimizer)"
        )
    for key, rule in _BUCKET_RULES.items():
        if zero.get(key) == "auto":
            zero[key] = rule(d_model)
            if key == "reduce_bucket_size" and device_type == "cuda":
                zero[key] = max(zero[key], GPU_REDUCE_BUCKET_ELEMENTS)
    multi_node = ranks_per_node is not None and world_size > ranks_per_node
    if config.get("communication_data_type", "auto") == "auto":
        # DeepSpeed sums gradients across ranks in the model dtype by default: bf16's 8-bit mantissa
        # over 32+ ranks of inter-node reductions loses the small gradients. fp32 costs twice the
        # bytes; inside one node (NVLink) the default bf16 stays.
        if multi_node and precision == "bf16":
            config["communication_data_type"] = "fp32"
        else:
            config.pop("communication_data_type", None)
    if zero.get("overlap_comm") == "auto":
        zero["overlap_comm"] = device_type == "cuda"
    if zero.get("zero_hpz_partition_size") == "auto":
        zero["zero_hpz_partition_size"] = ranks_per_node if multi_node else 1

    leftover = _find_auto(config)
    if leftover:
        raise DeepSpeedConfigError(f"{source}: no rule resolves \"auto\" for '{leftover[0]}'; give a value")
    return config


def resolved_ds_config(
    config: TrainConfig, world_size: int, d_model: int, device_type: str = "cpu", ranks_per_node: int | None = None
) -> dict[str, Any]:
    """The run's DeepSpeed JSON: its preset (`auto` chosen by world size, see AUTO_PRESET) resolved
    for this world, device and model width."""
    template, source = load_ds_template(preset_for(config.deepspeed, world_size, config.precision))
    return resolve_ds_config(
        template,
        d_model=d_model,
        micro_batch_size=config.data.micro_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(config.data, world_size),
        world_size=world_size,
        optim=config.optim,
        precision=config.precision,
        source=source,
        device_type=device_type,
        ranks_per_node=ranks_per_node,
    )
