"""Per-phase freezing of parameter groups on one DeepSpeed engine that lives for the whole job.

Every parameter is in the optimizer from the start, one param group per `parameter_groups()` name,
because ZeRO builds its flat fp32 partitions once, at `deepspeed.initialize`, from the parameters
that require grad then. A phase freezes a group by
- `requires_grad = False`: autograd computes no gradient for it (ZeRO treats it as a zero gradient),
- `frozen = True` in its optimizer param group: the optimizer step skips the group entirely, so its
  weights stay bit-identical and its Adam moments and step count are not advanced (an Adam step on a
  zero gradient would still decay the moments and advance the bias correction),
- lr 0 for the group (what TensorBoard and checkpoints show; not relied on for the two points above).
A group that trains again in a later phase continues from its own, untouched, Adam state, and groups
that train throughout keep theirs across the phase switch.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def optimizer_param_groups(groups: dict[str, list[nn.Parameter]], weight_decay: float) -> list[dict]:
    """One optimizer param group per named parameter group (empty groups dropped; ZeRO cannot flatten them)."""
    for params in groups.values():
        for param in params:
            param.requires_grad_(True)  # ZeRO only partitions parameters that require grad at init
    return [
        {"params": params, "name": name, "weight_decay": weight_decay, "frozen": False}
        for name, params in groups.items()
        if params
    ]


def set_frozen(groups: dict[str, list[nn.Parameter]], optimizer, frozen: Iterable[str]) -> None:
    """Freezes the named groups and unfreezes the others.

    Args:
        groups: `vae.parameter_groups()`.
        optimizer: the engine's base optimizer (whose param groups carry "name" and "frozen").
        frozen: names of the groups to freeze in this phase.
    """
    frozen = set(frozen)
    for name, params in groups.items():
        for param in params:
            param.requires_grad_(name not in frozen)
    for group in optimizer.param_groups:
        group["frozen"] = group["name"] in frozen


def skip_frozen_groups(optimizer) -> None:
    """Makes `optimizer.step()` leave param groups marked `frozen` alone.

    ZeRO calls the base optimizer's `step()` with its own flat fp32 partitions swapped into the same
    param-group dicts, so the `frozen` mark survives; hiding a frozen group's params for the duration
    of the call works for torch AdamW, FusedAdam and DeepSpeedCPUAdam alike. Patched on the instance
    (not a subclass) so DeepSpeed still recognises the optimizer type as ZeRO-supported.
    """
    original_step = optimizer.step

    def step(*args, **kwargs):
        hidden = [(group, group["params"]) for group in optimizer.param_groups if group.get("frozen")]
        for group, _ in hidden:
            group["params"] = []
        try:
            return original_step(*args, **kwargs)
        finally:
            for group, params in hidden:
                group["params"] = params

    optimizer.step = step
