"""Non-finite losses: skipped steps are counted, and too many in a row abort with a clear error."""

from __future__ import annotations

import pytest

from seq2vae.train.config import PhaseConfig
from seq2vae.train.trainer import NonFiniteLossError, SkipCounter, phase_at


def test_consecutive_skips_abort_and_a_good_step_resets_the_run():
    counter = SkipCounter(limit=3)
    for step, skipped in enumerate([True, True, False, True, True], start=1):
        counter.record(skipped, step)
    assert (counter.consecutive, counter.total) == (2, 4)
    with pytest.raises(NonFiniteLossError, match=r"step 6: 3 consecutive.*optim.max_consecutive_skips=3"):
        counter.record(True, 6)


def test_phase_at_maps_global_steps_to_phases():
    phases = [PhaseConfig(name="a", steps=2), PhaseConfig(name="b", steps=3)]
    assert [phase_at(phases, step) for step in range(5)] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    with pytest.raises(ValueError):
        phase_at(phases, 5)
