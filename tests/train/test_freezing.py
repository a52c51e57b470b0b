"""Frozen param groups are skipped by the optimizer step: weights and Adam state stay untouched."""

from __future__ import annotations

import torch
from torch import nn

from seq2vae.train.freezing import optimizer_param_groups, set_frozen, skip_frozen_groups


def test_frozen_group_keeps_weights_and_adam_state():
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(4, 4), nn.Linear(4, 4)
    groups = {"encoder": list(encoder.parameters()), "decoder": list(decoder.parameters()), "latent": []}
    param_groups = optimizer_param_groups(groups, weight_decay=0.1)
    assert [g["name"] for g in param_groups] == ["encoder", "decoder"]  # empty groups dropped
    optimizer = torch.optim.AdamW(param_groups, lr=0.1)
    skip_frozen_groups(optimizer)
    set_frozen(groups, optimizer, ["decoder"])
    assert not any(p.requires_grad for p in decoder.parameters())
    frozen_before = [p.detach().clone() for p in decoder.parameters()]
    trained_before = [p.detach().clone() for p in encoder.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        decoder(encoder(torch.randn(2, 4))).sum().backward()
        for p in decoder.parameters():  # as if ZeRO handed the frozen group zero gradients
            p.grad = torch.zeros_like(p)
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, decoder.parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(trained_before, encoder.parameters()))
    assert all(p not in optimizer.state for p in decoder.parameters())
    assert all(int(optimizer.state[p]["step"]) == 3 for p in encoder.parameters())
    assert all(len(g["params"]) > 0 for g in optimizer.param_groups)  # restored after each step

    set_frozen(groups, optimizer, [])
    optimizer.zero_grad()
    decoder(encoder(torch.randn(2, 4))).sum().backward()
    optimizer.step()
    assert all(int(optimizer.state[p]["step"]) == 1 for p in decoder.parameters())
