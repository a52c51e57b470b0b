"""Every check of a training run that needs no model, run before the run directory is created or touched.

A mistake in the config, the DeepSpeed JSON, the shards, the tokenizer, the backbone path or the
resume target is found in seconds and reported as one line (a `UserError`), instead of after the
backbone loaded, or after the run directory got a config.yaml that no run belongs to. Every rank
runs the same checks on the same files, so every rank fails alike and no collective is left waiting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checkpoint.saving import resolve_resume
from ..data.stream import ShardError, check_tokenizer, check_vocabulary_fits, load_source_meta, open_source
from ..errors import UserError
from ..model.build import backbone_config, load_tokenizer
from ..model.debug import DEBUG_BACKBONES
from .config import TrainConfig, gradient_accumulation_steps
from .ds_config import resolved_ds_config

# A directory holds a backbone's weights when it has one of these (sharded checkpoints: their index).
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


class ModelFilesError(UserError):
    """A backbone or tokenizer that cannot be loaded from where the config says it is."""


class ResumeTargetError(UserError):
    """`resume` (or the run directory's `latest`) names a checkpoint that does not exist."""


def world_size_from_environment() -> int:
    """The world size torchrun announces (1 outside torchrun), known before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_before_run(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """Raises a UserError for the first problem found; returns the training shards' meta.json.

    Checks: batch arithmetic for `world_size`, the DeepSpeed config, the train (and valid) shard
    directories and their files, the tokenizer (loadable, and the one the shards were written with),
    the shards' vocabulary against the backbone's embedding size, the backbone's weight files, and the
    resume target.
    """
    gradient_accumulation_steps(config.data, world_size)
    for key, value in (("data.train", config.data.train), ("data.valid", config.data.valid)):
        if value and _looks_local(value) and not Path(value).exists():
            raise ModelFilesError(f"key '{key}': {value} does not exist")
    _check_backbone_files(config.model.backbone)
    tokenizer = _load_tokenizer(config)
    architecture = _backbone_architecture(config, tokenizer)
    resolved_ds_config(config, world_size, architecture.d_model)
    meta, shards = open_source(config.data.train, "train")
    _check_shard_files(shards)
    check_tokenizer(meta, tokenizer)
    check_vocabulary_fits(meta, architecture.vocab_size, f"model.backbone={config.model.backbone!r}")
    if config.data.valid:
        load_source_meta(config.data.valid)
    _check_resume(config)
    return meta


def _check_backbone_files(backbone: str) -> None:
    if backbone in DEBUG_BACKBONES:
        return
    path = Path(backbone)
    if not (_looks_local(backbone) or path.exists()):
        return  # a hub name; transformers reports it (this machine may have it cached)
    if not path.is_dir():
        raise ModelFilesError(f"key 'model.backbone': {backbone} does not exist")
    if not (path / "config.json").is_file():
        raise ModelFilesError(f"key 'model.backbone': {backbone} has no config.json: not a saved Hugging Face model")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelFilesError(
            f"key 'model.backbone': {backbone} has no weights (none of {', '.join(WEIGHT_FILES)})"
        )


def _load_tokenizer(config: TrainConfig):
    name = config.model.tokenizer or config.model.backbone
    key = "model.tokenizer" if config.model.tokenizer else "model.backbone"
    if _looks_local(name) and not Path(name).exists():
        raise ModelFilesError(f"key '{key}': tokenizer directory {name} does not exist")
    if Path(name).is_dir() and not any(Path(name).glob("tokenizer*")):
        raise ModelFilesError(f"key '{key}': {name} holds no tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        return load_tokenizer(config.model)
    except OSError as error:
        raise ModelFilesError(f"key '{key}': cannot load a tokenizer from {name!r}: {_first_line(error)}") from None


def _backbone_architecture(config: TrainConfig, tokenizer):
    try:
        return backbone_config(config.model, tokenizer)
    except OSError as error:
        raise ModelFilesError(
            f"key 'model.backbone': cannot load the config of {config.model.backbone!r}: {_first_line(error)}"
        ) from None


def _check_shard_files(shards) -> None:
    for shard in shards:
        if "://" not in shard.url and not shard.url.startswith("pipe:") and not Path(shard.url).is_file():
            raise ShardError(f"shard {shard.url} is listed in meta.json but missing")


def _check_resume(config: TrainConfig) -> None:
    try:
        resolve_resume(config.resume, Path(config.run_dir) / "checkpoints", look_only=True)
    except FileNotFoundError as error:
        raise ResumeTargetError(str(error)) from None


def _looks_local(name: str) -> bool:
    """A filesystem path rather than a hub name ("google/flan-t5-xl") or a URL."""
    return "://" not in name and not name.startswith("pipe:") and (Path(name).is_absolute() or name.startswith((".", "~")))


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
