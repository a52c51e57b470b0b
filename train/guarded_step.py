"""The optimizer step of an engine without ZeRO (stage 0): clipping and the non-finite skip ZeRO has.

DeepSpeed 0.19.8 hands a stage-0 fp32 engine the bare torch optimizer: nothing checks the gradients,
so a step whose gradients are inf/NaN is applied and the weights become NaN, where ZeRO-1/2/3 (and
DeepSpeed's BF16_Optimizer) drop it. The trainer's non-finite handling relies on that drop (a NaN loss
is turned into NaN gradients so that every rank drops the same step, see `Trainer.train_step`).
`GuardedOptimizer` gives stage 0 the same semantics: it computes the global gradient norm on the
device, clips with it, and skips the step when the norm is not finite, setting `overflow`, which
`DeepSpeedEngine._take_model_step` reads: the engine then counts a skipped step, leaves its lr
scheduler and reports `was_step_applied()` False, as under ZeRO. Reading the norm's finiteness is the
step's one host synchronisation (ZeRO's overflow check costs the same). `_global_grad_norm` is what
`engine.get_global_grad_norm()` returns: a device tensor, read on logging steps only.
"""

from __future__ import annotations

import torch


class GuardedOptimizer:
    """Wraps the engine's optimizer (the torch AdamW DeepSpeed built); `clip` is optim.gradient_clipping."""

    def __init__(self, optimizer: torch.optim.Optimizer, clip: float):
        self.optimizer = optimizer
        self.clip = clip
        self.overflow = False
        self._global_grad_norm: torch.Tensor | None = None

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def _with_gradients(self) -> list[torch.nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("GuardedOptimizer.step takes no closure")
        parameters = self._with_gradients()
        if not parameters:  # every group frozen: nothing to check or update
            self.overflow, self._global_grad_norm = False, torch.zeros(())
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)
        if self.clip > 0:
            torch.nn.utils.clip_grads_with_norm_(parameters, self.clip, norm, foreach=True)
        self._global_grad_norm = norm
        self.overflow = not bool(torch.isfinite(norm))  # the one host sync of the step
        if not self.overflow:
            self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)


def install_guarded_step(engine, clip: float) -> GuardedOptimizer:
    """Puts a `GuardedOptimizer` in a stage-0 engine; the engine's own fp32 clipping is turned off,
    since the guard clips with the norm it checks (DeepSpeed's would compute it again, off the record:
    `get_global_grad_norm()` would stay None)."""
    guard = GuardedOptimizer(engine.optimizer, clip)
    engine.optimizer = guard
    engine.clip_fp32_gradients = lambda: None
    return guard
