"""model.reference_compat: each switch reproduces the reference T5-VAE's quirk on a toy tensor, and the
defaults keep ours (seongminp/transformers-into-vaes e2edc228; file:line in model/reference_compat.py)."""

from __future__ import annotations

import pytest
import torch

from seq2vae.config import ConfigError
from seq2vae.model import VAEConfig, build_vae
from seq2vae.model.objective import vae_loss
from seq2vae.model.pooling import Pooler
from seq2vae.model.reference_compat import ReferenceCompat, frozen_groups, reference_prefix_reshape


def test_prefix_reshape_hands_sentences_other_sentences_slots():
    # B=2 sentences, L=2 layers, H=1 head, Dh=2: sentence b's projection is [b0 b1 b2 b3].
    projection = torch.tensor([[0.0, 1, 2, 3], [10, 11, 12, 13]])
    reference = reference_prefix_reshape(projection, 2, 1, 2)  # [L,B,H,1,Dh]
    # vendor_t5.py:228: a flat reshape, so layer 1 of sentence 0 holds sentence 1's first half.
    assert reference[1, 0, 0, 0].tolist() == [10.0, 11.0]
    assert reference[0, 1, 0, 0].tolist() == [2.0, 3.0]
    ours = projection.view(2, 2, 1, 1, 2).transpose(0, 1)
    assert ours[1, 0, 0, 0].tolist() == [2.0, 3.0]
    assert torch.equal(reference_prefix_reshape(projection[:1], 2, 1, 2), projection[:1].view(1, 2, 1, 1, 2).transpose(0, 1))


def test_prefix_reshape_switch_hands_sentence_0_its_batch_mates_slots(tokenizer_dir):
    """On the model's own PrefixInjection: with the switch, sentence 0's slots change when only
    sentence 1's latent does. (Checked on the prefix, not on log p(x|z): see the report to the lead,
    the decoder ignores the prefix cache under transformers 5.24.)"""

    def slots_of_first(compat: bool, mate_shift: float) -> torch.Tensor:
        torch.manual_seed(0)
        config = VAEConfig(
            backbone="debug-t5", tokenizer=str(tokenizer_dir), latent_dim=16, injection="prefix",
            reference_compat=ReferenceCompat(prefix_reshape=compat),
        )
        injection = build_vae(config).latent_to_prefix
        z = torch.randn(2, 16, generator=torch.Generator().manual_seed(1))
        z[1] += mate_shift  # only the second sentence's latent changes
        with torch.no_grad():
            return injection(z)[:, 0]  # [L,H,1,Dh] of sentence 0

    assert torch.equal(slots_of_first(False, 0.0), slots_of_first(False, 3.0))
    assert not torch.allclose(slots_of_first(True, 0.0), slots_of_first(True, 3.0))


def test_pool_padding_reproduces_pooling_over_pad_states():
    hidden = torch.tensor([[[1.0], [2.0], [9.0]], [[4.0], [3.0], [0.0]]])  # [B=2, S=3, D=1]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert Pooler("max", 1)(hidden, mask).tolist() == [[2.0], [4.0]]
    assert Pooler("max", 1, include_padding=True)(hidden, mask).tolist() == [[9.0], [4.0]]  # the pad state wins
    assert Pooler("mean", 1, include_padding=True)(hidden, mask).flatten().tolist() == pytest.approx([4.0, 7.0 / 3])
    assert Pooler("mean", 1)(hidden, mask).flatten().tolist() == pytest.approx([1.5, 7.0 / 3])


def test_recon_mean_over_positions_scales_the_kl_weight_by_the_length():
    # Token losses [B=2, N=4] with 0 at padding, as F.cross_entropy(ignore_index=pad) gives them.
    token_nll = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    kl_per_dim = torch.tensor([[0.5, 1.5], [1.0, 1.0]])
    loss, parts = vae_loss(token_nll.sum(-1), kl_per_dim, beta=0.1, recon_mean_length=4)
    assert float(loss) == pytest.approx(float(token_nll.mean() + 0.1 * kl_per_dim.sum(-1).mean()))  # model_t5.py:114
    assert float(parts["recon"]) == pytest.approx(5.0)  # the reported reconstruction stays per sentence
    ours, _ = vae_loss(token_nll.sum(-1), kl_per_dim, beta=0.1)
    assert float(ours) == pytest.approx(5.0 + 0.1 * 2.0)
    # Against our summed reconstruction, beta 0.1 at length 4 is a KL weight of 0.4.
    scaled, _ = vae_loss(token_nll.sum(-1), kl_per_dim, beta=0.4)
    assert float(loss) * 4 == pytest.approx(float(scaled))


def test_freeze_shared_embedding_adds_the_embedding_group_with_the_decoder():
    assert frozen_groups(["decoder", "latent"], ReferenceCompat()) == {"decoder", "latent"}
    assert (frozen_groups(["decoder", "latent"], ReferenceCompat(freeze_shared_embedding=True))
            == {"decoder", "latent", "embeddings"})
    assert frozen_groups(["encoder"], ReferenceCompat(freeze_shared_embedding=True)) == {"encoder"}


def test_defaults_are_off_and_bad_combinations_name_the_key(tokenizer_dir):
    assert not VAEConfig().reference_compat.any()
    with pytest.raises(ConfigError, match="reference_compat.prefix_reshape"):
        VAEConfig(injection="memory", reference_compat=ReferenceCompat(prefix_reshape=True))
    with pytest.raises(ConfigError, match="reference_compat.pool_padding"):
        VAEConfig(pooling="attention", reference_compat=ReferenceCompat(pool_padding=True))
    with pytest.raises(ConfigError, match="recon_mean_length"):
        ReferenceCompat(recon_mean_length=-1)
    roundtrip = VAEConfig.from_dict({"backbone": "debug-t5", "reference_compat": {"pool_padding": True}})
    assert roundtrip.reference_compat.pool_padding and VAEConfig.from_dict(roundtrip.to_dict()) == roundtrip

