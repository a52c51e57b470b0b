"""Beta (KL weight) and learning-rate schedules: pure functions of the step, so resume needs no state.

Steps count from 0: `step_in_phase` 0 is the phase's first optimizer step, `step` 0 the job's first.
"""

from __future__ import annotations

import math

from .config import BetaSchedule, OptimConfig


def _ramp(start: float, end: float, progress: float) -> float:
    """Linear interpolation start -> end, progress clipped to [0, 1]."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def beta_at(schedule: BetaSchedule, step_in_phase: int, phase_steps: int) -> float:
    """The KL weight at `step_in_phase` (0-based) of a phase lasting `phase_steps` steps."""
    if not 0 <= step_in_phase < phase_steps:
        raise ValueError(f"step_in_phase {step_in_phase} outside the phase's [0, {phase_steps})")
    if schedule.kind == "constant":
        return schedule.value
    if schedule.kind == "linear":
        ramp = schedule.warmup_steps if schedule.warmup_steps is not None else schedule.warmup_fraction * phase_steps
        if ramp <= 0:
            return schedule.value
        return _ramp(schedule.start, schedule.value, step_in_phase / ramp)
    if schedule.kind == "cyclical":
        # Fu et al. 2019: the phase is split into M equal cycles; each ramps for a fraction R, then holds.
        period = phase_steps / schedule.cycles
        position = (step_in_phase % period) / period  # in [0, 1)
        return _ramp(schedule.start, schedule.value, position / schedule.ratio)
    if schedule.kind == "optimus":
        # Li et al. 2020: beta = start for the first half, linear ramp over the next quarter, then value.
        progress = step_in_phase / phase_steps
        return _ramp(schedule.start, schedule.value, (progress - 0.5) / 0.25)
    if schedule.kind == "kl_target":
        raise ValueError("kind kl_target's beta is the controller's state, not a function of the step: next_kl_target_beta")
    raise ValueError(f"unknown beta schedule kind {schedule.kind!r}; valid: constant, linear, cyclical, optimus, kl_target")


def next_kl_target_beta(beta: float, achieved_kl: float, schedule: BetaSchedule) -> float:
    """The beta of the next step under `kind: kl_target`: integral control towards a target rate.

    beta rises while the achieved KL (nats per sentence, averaged over ranks) is above
    `schedule.target_kl` and falls while it is below, by `gain` x the relative error per step,
    always within [start, value]. A pure function of (beta, achieved KL): the trainer keeps beta in
    its checkpoints, so a resumed run continues the same sequence.
    """
    error = (achieved_kl - schedule.target_kl) / schedule.target_kl
    return min(max(beta + schedule.gain * error, schedule.start), schedule.value)


def lr_at(optim: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate at optimizer step `step` (0-based) of `total_steps`.

    Linear warm-up to `optim.lr` over `warmup_steps` (step 0 already takes lr / warmup_steps, so no
    step is wasted at lr 0), then cosine or linear decay reaching `min_lr_ratio * lr` at the last step.
    """
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside [0, {total_steps})")
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    decay_steps = total_steps - 1 - optim.warmup_steps
    progress = (step - optim.warmup_steps) / decay_steps if decay_steps > 0 else 1.0
    if optim.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif optim.schedule == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"unknown lr schedule {optim.schedule!r}; valid: cosine, linear, constant")
    return optim.lr * (optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * shape)
