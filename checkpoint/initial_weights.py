"""Where a run's initial weights come from: the same weights for every ZeRO stage and world size.

Under ZeRO-3, `deepspeed.zero.Init` partitions each module right after its constructor, so random
initialisation draws from each rank's generator in a different order than an unpartitioned build:
the same seed gave `debug-t5` other weights on ZeRO-3 than on ZeRO-1/2, and stage comparisons failed
from step 1. Here every randomly initialised tensor is a function of the seed and its name alone:

- a random (debug) backbone is built whole on CPU, outside `zero.Init`, from the seed; its tensors are
  copied into the engine's model. Debug backbones are tiny by construction, so the copy costs nothing.
- the VAE heads (pooler, posterior, latent projections) are reset module by module with the global
  generator seeded by (seed, module name). They are small even beside an 11B backbone, and a
  pretrained backbone is never touched: its weights come from its checkpoint.

`model.init_from` instead takes every weight from an exported model directory or a run's latest
checkpoint (see `init_from.py`). All writes go through `writable`: under ZeRO-3 one parameter (or one
module's parameters) is gathered at a time and rank 0's values are scattered back into the
partitions, so no rank ever holds more than one full tensor beyond its partition.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..model import Seq2SeqVAE, VAEConfig, build_vae
from ..model.debug import DEBUG_BACKBONES


def name_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from (seed, name), stable across processes (unlike `hash`)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextlib.contextmanager
def writable(params: list[nn.Parameter], zero3: bool) -> Iterator[bool]:
    """Makes `params` whole and writable; yields whether this rank should write them.

    ZeRO-3: gathered on every rank (a collective), rank 0 writes, its values are partitioned back on
    exit. ZeRO-0/1/2: every parameter is whole on every rank; every rank writes the same values
    (DeepSpeed also broadcasts rank 0's module when the engine is built).
    """
    if not zero3:
        yield True
        return
    import deepspeed
    import torch.distributed as dist

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        yield dist.get_rank() == 0


def has_random_backbone(config: VAEConfig) -> bool:
    return config.backbone in DEBUG_BACKBONES


def reference_backbone_weights(config: VAEConfig, seed: int) -> dict[str, torch.Tensor]:
    """The random debug backbone's parameters, built whole on CPU from `seed` alone.

    Call it while no `HfDeepSpeedConfig` for ZeRO-3 is alive: transformers would otherwise build the
    reference under `zero.Init` as well, which is exactly the partition-dependent path to avoid.
    """
    assert has_random_backbone(config), "only random backbones have a reference initialisation"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = build_vae(config, pretrained_weights=False).backbone
    return {name: parameter.detach() for name, parameter in reference.named_parameters()}


def copy_parameters(
    module: nn.Module, source: Callable[[str], torch.Tensor | None], zero3: bool, description: str
) -> None:
    """Assigns `source(name)` to every parameter of `module` (tied parameters once), one at a time.

    `source` is only called on writing ranks (rank 0 under ZeRO-3), so other ranks never read weights.
    Raises ValueError naming the tensor when the source lacks it or its shape differs.
    """
    for name, parameter in module.named_parameters():
        with writable([parameter], zero3) as writer:
            if not writer:
                continue
            value = source(name)
            if value is None:
                raise ValueError(f"{description} has no tensor for parameter {name!r}")
            if tuple(value.shape) != tuple(parameter.shape):
                raise ValueError(
                    f"{description}: tensor {name!r} has shape {tuple(value.shape)}, the model expects {tuple(parameter.shape)}"
                )
            with torch.no_grad():
                parameter.data.copy_(value.to(parameter.dtype))


def head_modules(vae: Seq2SeqVAE) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) for every module outside the backbone that owns parameters."""
    for name, module in vae.named_modules():
        if name == "backbone" or name.startswith("backbone.") or name == "":
            continue
        if any(True for _ in module.parameters(recurse=False)):
            yield name, module


def reset_heads(vae: Seq2SeqVAE, seed: int, zero3: bool) -> None:
    """Re-initialises the VAE heads from generators seeded by (seed, module name).

    Modules with `reset_parameters` (the Linear heads) draw their default PyTorch initialisation; a
    head parameter without it (the attention pooler's query) is created as a constant (zeros), the
    same on every stage, and is left alone.
    """
    for name, module in head_modules(vae):
        reset = getattr(module, "reset_parameters", None)
        if reset is None:
            continue
        with writable(list(module.parameters(recurse=False)), zero3) as writer:
            if writer:
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    torch.manual_seed(name_seed(seed, name))
                    reset()


def initialise(vae: Seq2SeqVAE, seed: int, zero3: bool, reference: dict[str, torch.Tensor] | None) -> None:
    """Gives `vae` its seed-determined initial weights: `reference` for a random backbone, then the heads."""
    if reference is not None:
        copy_parameters(vae.backbone, reference.get, zero3, "the reference initialisation")
    reset_heads(vae, seed, zero3)
