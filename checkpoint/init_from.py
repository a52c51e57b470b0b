"""`model.init_from=DIR`: a new run that starts from trained weights (optimizer, data and step fresh).

DIR is either a model directory (`seq2vae export` / `save_pretrained` output: vae_config.json,
backbone/*.safetensors, vae_heads.safetensors) or a training run directory (config.yaml and
checkpoints/latest): its best-validation checkpoint when it kept one (checkpoints/best,
`checkpoint.keep_best`, as the reference's phase 2 starts from its phase 1's best), else its latest.
`resolve_init_from` validates it before any model is built; `load_init_weights` then assigns every
parameter through `initial_weights.copy_parameters`, which under ZeRO-3 gathers one parameter at a
time and lets rank 0 write it, so only rank 0 ever reads weights:

- from a model directory tensor by tensor (safetensors `safe_open`: one tensor in memory at a time);
- from a run directory through the fp32 consolidation of its checkpoint (`consolidate.py`: files
  memory-mapped and weights-only; rank 0 holds the consolidated state, the other ranks nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..config import ConfigError
from ..model import Seq2SeqVAE, VAEConfig
from ..model.vae import CONFIG_FILE, refuse_pickled_weights
from .consolidate import consolidate
from .initial_weights import copy_parameters
from .saving import best_checkpoint, latest_checkpoint, run_model_config

# Settings that change the VAE's parameters: a source must agree on all of them with the config.
ARCHITECTURE_KEYS = ("backbone", "latent_dim", "pooling", "injection", "memory_states")
KEY = "model.init_from"


@dataclass
class InitSource:
    kind: Literal["model", "run"]
    path: Path  # the model directory, or the run's checkpoint directory (checkpoints/step_X)
    description: str  # logged when the weights are copied: says which checkpoint (best or latest) of a run


def _error(directory: Path, message: str) -> ConfigError:
    return ConfigError(f"key '{KEY}': {directory}: {message}")


def _source_settings(directory: Path) -> tuple[Literal["model", "run"], dict, Path, str]:
    """(kind, the source's model settings, the path to read weights from, which checkpoint of a run it is)."""
    if (directory / CONFIG_FILE).is_file():
        try:
            record = json.loads((directory / CONFIG_FILE).read_text())
            settings = record["vae"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise _error(directory, f"{CONFIG_FILE} is not a seq2vae model config ({error})") from None
        try:
            refuse_pickled_weights(directory)
        except ValueError as error:
            raise _error(directory, str(error)) from None
        if not list((directory / "backbone").glob("*.safetensors")) or not (directory / "vae_heads.safetensors").is_file():
            raise _error(directory, "a model directory needs backbone/*.safetensors and vae_heads.safetensors")
        return "model", settings, directory, ""
    if (directory / "config.yaml").is_file() and (directory / "checkpoints").is_dir():
        try:
            checkpoint, which = best_checkpoint(directory / "checkpoints"), "best"
            if checkpoint is None:
                checkpoint, which = latest_checkpoint(directory / "checkpoints"), "latest"
        except FileNotFoundError as error:  # a pointer naming a checkpoint that is gone
            raise _error(directory, str(error)) from None
        if checkpoint is None:
            raise _error(directory, "the run has no complete checkpoint (no checkpoints/latest)")
        settings = run_model_config(directory).to_dict()
        return "run", settings, checkpoint, which
    raise _error(
        directory,
        "neither a model directory (no vae_config.json) nor a training run directory (no config.yaml + checkpoints/)",
    )


def resolve_init_from(model: VAEConfig) -> InitSource:
    """Validates `model.init_from` against the config; raises ConfigError naming the key and the problem."""
    assert model.init_from, "resolve_init_from needs model.init_from"
    directory = Path(model.init_from)
    if not directory.is_dir():
        raise _error(directory, "no such directory")
    kind, settings, path, which = _source_settings(directory)
    for key in ARCHITECTURE_KEYS:
        theirs, ours = settings.get(key), getattr(model, key)
        if theirs != ours:
            raise _error(
                directory,
                f"its model.{key} is {theirs!r} but this config has model.{key}={ours!r}; "
                f"set model.{key}={theirs} to start from it",
            )
    description = f"{KEY}={directory}" + (f" ({which} checkpoint {path.name})" if kind == "run" else "")
    return InitSource(kind, path, description)


def _aliases(module: nn.Module) -> dict[str, list[str]]:
    """Each parameter's name -> every name it is reachable under (tied weights have several)."""
    names_by_id: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names_by_id.setdefault(id(parameter), []).append(name)
    return {name: names_by_id[id(parameter)] for name, parameter in module.named_parameters()}


class _ModelDirectoryTensors:
    """Reads a model directory's tensors one at a time, by the VAE's parameter names."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self._handles = []
        self._where: dict[str, tuple[object, str]] = {}
        for path in sorted((directory / "backbone").glob("*.safetensors")):
            handle = safe_open(str(path), framework="pt")
            self._handles.append(handle)
            for key in handle.keys():
                self._where[f"backbone.{key}"] = (handle, key)
        heads = safe_open(str(directory / "vae_heads.safetensors"), framework="pt")
        self._handles.append(heads)
        for key in heads.keys():
            self._where[key] = (heads, key)

    def get(self, name: str) -> torch.Tensor | None:
        if name not in self._where:
            return None
        handle, key = self._where[name]
        return handle.get_tensor(key)


def load_init_weights(vae: Seq2SeqVAE, source: InitSource, zero3: bool) -> None:
    """Assigns every parameter of `vae` from `source` (a collective under ZeRO-3: call on all ranks)."""
    reader = None

    def tensor(name: str) -> torch.Tensor | None:
        nonlocal reader
        if reader is None:  # opened lazily: under ZeRO-3 only rank 0 ever asks
            reader = _ModelDirectoryTensors(source.path) if source.kind == "model" else consolidate(source.path)
        for alias in aliases[name]:
            value = reader.get(alias)
            if value is not None:
                return value
        return None

    aliases = _aliases(vae)
    copy_parameters(vae, tensor, zero3, source.description)
