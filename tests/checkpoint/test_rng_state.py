"""Each rank saves and restores its own random streams: python, numpy, torch CPU, its CUDA device only."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from seq2vae.checkpoint.saving import capture_rng, restore_rng


def draws(generator: torch.Generator, device: torch.device) -> list:
    values = [random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=generator))]
    if device.type == "cuda":
        values.append(float(torch.rand(1, device=device)))
    return values


DEVICES = [torch.device("cpu")] + ([torch.device("cuda", torch.cuda.device_count() - 1)] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES, ids=str)
def test_restored_streams_repeat_the_same_draws(device):
    generator = torch.Generator().manual_seed(3)
    state = capture_rng(generator, device)
    assert ("cuda" in state) == (device.type == "cuda")
    if device.type == "cuda":
        # One device's state, not one per visible GPU.
        assert isinstance(state["cuda"], torch.Tensor) and state["cuda"].dtype == torch.uint8
    first = draws(generator, device)
    assert draws(generator, device) != first  # the streams moved on
    restore_rng(state, generator, device)
    assert draws(generator, device) == first


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_checkpoint_holding_every_devices_state_restores_this_ranks():
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    generator = torch.Generator().manual_seed(3)
    state = capture_rng(generator, device)
    state["cuda"] = torch.cuda.get_rng_state_all()  # what checkpoints before 2026-12 held
    expected = float(torch.rand(1, device=device))
    restore_rng(state, generator, device)
    assert float(torch.rand(1, device=device)) == expected
