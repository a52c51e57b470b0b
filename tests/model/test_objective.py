"""vae_loss: beta weighting and both free-bits variants."""

from __future__ import annotations

import pytest
import torch

from seq2vae.model import vae_loss


def test_beta_weights_the_raw_kl_without_free_bits():
    recon = torch.tensor([10.0, 20.0])
    kl_per_dim = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    loss, parts = vae_loss(recon, kl_per_dim, beta=0.5)
    assert loss.item() == pytest.approx(15.0 + 0.5 * 3.0)
    assert parts["kl"].item() == parts["kl_thresholded"].item() == pytest.approx(3.0)


def test_dimension_free_bits_thresholds_each_sentence_and_dimension():
    recon = torch.zeros(2)
    kl_per_dim = torch.tensor([[0.1, 2.0], [0.7, 0.0]], requires_grad=True)
    loss, parts = vae_loss(recon, kl_per_dim, beta=1.0, free_bits=0.5, free_bits_mode="dimension")
    assert parts["kl_thresholded"].item() == pytest.approx(((0.5 + 2.0) + (0.7 + 0.5)) / 2)
    assert parts["kl"].item() == pytest.approx((2.1 + 0.7) / 2)  # logged KL is always the raw KL
    loss.backward()
    # Dimensions under the threshold get no gradient.
    assert kl_per_dim.grad.tolist() == [[0.0, 0.5], [0.5, 0.0]]


def test_batch_free_bits_thresholds_the_batch_mean():
    kl_per_dim = torch.tensor([[0.1, 2.0], [0.7, 0.0]])
    _, parts = vae_loss(torch.zeros(2), kl_per_dim, beta=2.0, free_bits=0.5, free_bits_mode="batch")
    # batch means per dim: 0.4 -> 0.5, 1.0 -> 1.0
    assert parts["kl_thresholded"].item() == pytest.approx(1.5)
    assert parts["loss"].item() == pytest.approx(3.0)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="free_bits_mode"):
        vae_loss(torch.zeros(1), torch.zeros(1, 2), beta=1.0, free_bits=0.1, free_bits_mode="sentence")
