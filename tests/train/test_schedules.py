"""Beta and learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

import pytest

from seq2vae.train.config import BetaSchedule, OptimConfig
from seq2vae.train.schedules import beta_at, lr_at, next_kl_target_beta


def betas(schedule: BetaSchedule, steps: int) -> list[float]:
    return [beta_at(schedule, step, steps) for step in range(steps)]


def test_constant():
    assert betas(BetaSchedule(kind="constant", value=0.3), 5) == [0.3] * 5


def test_linear_warmup_by_fraction_and_by_steps():
    by_fraction = betas(BetaSchedule(kind="linear", start=0.0, value=1.0, warmup_fraction=0.5), 8)
    assert by_fraction == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    by_steps = betas(BetaSchedule(kind="linear", start=0.2, value=1.0, warmup_steps=2, warmup_fraction=0.9), 4)
    assert by_steps == pytest.approx([0.2, 0.6, 1.0, 1.0])
    assert betas(BetaSchedule(kind="linear", value=0.7), 3) == [0.7] * 3  # no ramp: the value at once


def test_cyclical_has_m_cycles_ramping_for_ratio_r():
    values = betas(BetaSchedule(kind="cyclical", start=0.0, value=1.0, cycles=2, ratio=0.5), 8)
    # period 4, ramp over 2 steps then hold, twice (Fu et al. 2019)
    assert values == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0]


def test_optimus_is_zero_for_half_ramps_a_quarter_then_constant():
    values = betas(BetaSchedule(kind="optimus", start=0.0, value=1.0), 8)
    assert values == [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0]


def test_beta_rejects_steps_outside_the_phase():
    with pytest.raises(ValueError, match="outside"):
        beta_at(BetaSchedule(), 5, 5)


def test_lr_warmup_then_cosine_to_min_ratio():
    optim = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    values = [lr_at(optim, step, 14) for step in range(14)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1)
    middle = 4 + (14 - 1 - 4) / 2
    assert lr_at(optim, int(middle), 14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(middle) - 4) / 9)))
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_lr_linear_and_constant():
    linear = OptimConfig(lr=2.0, warmup_steps=0, schedule="linear", min_lr_ratio=0.0)
    assert [lr_at(linear, step, 5) for step in range(5)] == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0])
    constant = OptimConfig(lr=2.0, warmup_steps=2, schedule="constant")
    assert [lr_at(constant, step, 4) for step in range(4)] == [1.0, 2.0, 2.0, 2.0]


def test_kl_target_controller_settles_on_the_target_within_its_bounds():
    schedule = BetaSchedule(kind="kl_target", target_kl=20.0, start=0.0, value=2.0, gain=0.05)
    # A stand-in for training's response: more weight on the KL, less KL (50 nats at beta 0).
    def achieved(beta: float) -> float:
        return 50.0 / (1.0 + 5.0 * beta)

    beta, history = schedule.start, []
    for _ in range(400):
        beta = next_kl_target_beta(beta, achieved(beta), schedule)
        history.append(beta)
    assert achieved(beta) == pytest.approx(20.0, rel=0.01)
    assert all(schedule.start <= b <= schedule.value for b in history)
    # Bounds hold whatever the error; the same inputs give the same beta.
    assert next_kl_target_beta(1.99, 1e6, schedule) == 2.0
    assert next_kl_target_beta(0.01, 0.0, schedule) == 0.0
    assert next_kl_target_beta(0.5, 30.0, schedule) == next_kl_target_beta(0.5, 30.0, schedule) == pytest.approx(0.525)
    # An unreachable target (KL 50 even at the largest beta) pins beta at its upper bound.
    stuck = BetaSchedule(kind="kl_target", target_kl=10.0, start=0.0, value=0.1, gain=0.05)
    beta = 0.0
    for _ in range(100):
        beta = next_kl_target_beta(beta, achieved(beta), stuck)
    assert beta == 0.1
