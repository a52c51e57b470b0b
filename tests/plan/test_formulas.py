"""Per-rank bytes per ZeRO stage and FLOPs per token, against hand counts."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from seq2vae.model import VAEConfig
from seq2vae.model.flops import forward_flops_per_sentence, training_flops_per_token
from seq2vae.model.shape import model_shape
from seq2vae.plan import (
    InferenceBatch,
    ZeroSetting,
    activation_bytes,
    inference_bytes,
    model_state_bytes,
)
from seq2vae.plan.memory import inference_activation_bytes

P = 2376  # the tiny T5 VAE, counted in test_model_shape.py; every parameter has an even size
HALF = P // 2  # per-rank partition on 2 ranks


@pytest.fixture(scope="module")
def tiny(backbone_dirs):
    return model_shape(AutoConfig.from_pretrained(backbone_dirs["tiny-t5"]), VAEConfig(backbone="x", latent_dim=4))


def test_zero_1_and_2_bytes_per_rank(tiny):
    # bf16 params everywhere (2P); stage 1 keeps the bf16 gradients (2P) and a full fp32 gradient
    # buffer (4P), stage 2 its fp32 partition (4P/2); fp32 master + two AdamW moments on the
    # partition (12P/2).
    one = model_state_bytes(tiny, ZeroSetting(stage=1, reduce_bucket_size=64), 2, "bf16")
    assert (one.parameters, one.gradients, one.optimizer_states, one.buffers) == (2 * P, 6 * P, 12 * HALF, 0)
    two = model_state_bytes(tiny, ZeroSetting(stage=2, reduce_bucket_size=64), 2, "bf16")
    # One bf16 reduce bucket of d^2 = 64 elements; overlap_comm doubles it.
    assert (two.parameters, two.gradients, two.optimizer_states, two.buffers) == (2 * P, 4 * HALF, 12 * HALF, 128)
    assert model_state_bytes(tiny, ZeroSetting(stage=2, reduce_bucket_size=64, overlap_comm=True), 2, "bf16").buffers == 256
    offloaded = model_state_bytes(tiny, ZeroSetting(stage=2, reduce_bucket_size=64, offload_optimizer=True), 2, "bf16")
    assert (offloaded.gradients, offloaded.optimizer_states, offloaded.host) == (0, 0, 16 * HALF)


def test_zero_3_bytes_per_rank(tiny):
    zero = ZeroSetting(stage=3, reduce_bucket_size=64, prefetch_bucket_size=57, persistence_threshold=80)
    three = model_state_bytes(tiny, zero, 2, "bf16")
    assert (three.parameters, three.gradients, three.optimizer_states) == (2 * HALF, 4 * HALF, 12 * HALF)
    # Persistent parameters (numel <= 10 D = 80), whole on every rank: the 12 attention matrices
    # (8x8 = 64 each) = 768, relative biases 2 x 64, 7 norms x 8, posterior 64 + 8, latent_to_memory
    # 32 + 8: 1064 in all. The model is smaller than the reuse distance, so all of it is gathered at
    # once (2P), plus one bf16 reduce bucket (2 x 64).
    assert (three.gathered, three.buffers) == (2 * P, 2 * 64 + 2 * 1064)
    both = model_state_bytes(tiny, ZeroSetting(stage=3, offload_optimizer=True, offload_param=True, reduce_bucket_size=64,
                                                persistence_threshold=80), 2, "bf16")
    assert (both.parameters, both.gradients, both.optimizer_states, both.host) == (0, 0, 0, 18 * HALF)
    # hpZ over 2 GPUs adds a secondary bf16 copy partitioned over the node: 2P/2.
    hpz = model_state_bytes(tiny, ZeroSetting(stage=3, reduce_bucket_size=64, persistence_threshold=80,
                                              hpz_partition_size=2), 2, "bf16")
    assert hpz.buffers == three.buffers + 2 * HALF and hpz.device_total == three.device_total + 2 * HALF


def test_activations_shrink_with_checkpointing_and_grow_with_the_batch(tiny):
    full = activation_bytes(tiny, 4, 32, "bf16", checkpointing=False)
    assert activation_bytes(tiny, 8, 32, "bf16", checkpointing=False) > 1.9 * full
    assert activation_bytes(tiny, 4, 32, "bf16", checkpointing=True) < full


def test_inference_bytes_per_placement(tiny):
    batch = InferenceBatch(sequences=3, length=5)  # 15 tokens in one decoder call
    # fp32 (b = 4), per token: a layer holds 3bD = 96 plus the larger of attention 4bA = 128 and the
    # ReLU FFN 2bF = 128; the LM head the hidden state bD = 32 plus the logits and cross-entropy's
    # log-softmax (4 + 4) V = 800 (the logits are fp32 already: no copy). The LM head is the peak.
    assert inference_activation_bytes(tiny, batch, 4) == 15 * 832
    # bf16: hidden 2D = 16, logits 2V, their fp32 copy 4V, log-softmax 4V: 1016.
    assert inference_activation_bytes(tiny, batch, 2) == 15 * 1016
    zero = ZeroSetting(stage=3, prefetch_bucket_size=57, persistence_threshold=80)
    replica = inference_bytes(tiny, "replica", 2, 4, batch, zero)
    assert (replica.weights, replica.gathered, replica.total) == (4 * P, 0, 4 * P + 15 * 832)
    # ZeRO-3 on 2 ranks: half of every parameter + the 1064 persistent elements whole (see above); the
    # model is smaller than the reuse distance, so all of it ends up gathered.
    three = inference_bytes(tiny, "zero3", 2, 4, batch, zero)
    assert (three.weights, three.gathered) == (4 * (HALF + 1064), 4 * P)
    # Without reuse: the running module (the 100 x 8 embedding is the largest) + the prefetch bucket.
    no_reuse_setting = ZeroSetting(stage=3, prefetch_bucket_size=57, max_reuse_distance=0)
    no_reuse = inference_bytes(tiny, "zero3", 2, 4, batch, no_reuse_setting)
    assert no_reuse.gathered == 4 * (800 + 57)


def test_t5_base_flops_per_token_hand_count(backbone_dirs):
    shape = model_shape(AutoConfig.from_pretrained(backbone_dirs["t5-base"]), VAEConfig(backbone="t5-base", latent_dim=32))
    d, a, f, v, s, m = 768, 768, 3072, 32128, 128, 1
    encoder_token = 2 * 4 * d * a + 2 * 2 * s * a + 2 * 2 * d * f  # = 14,548,992 (ReLU FFN: 2 matrices)
    decoder_token = encoder_token + 2 * 2 * d * a + 2 * 2 * m * a  # + cross-attention q,o and scores
    decoder_sentence = 2 * 2 * m * d * a  # cross-attention k,v of the one memory state
    heads = 2 * d * 64 + 2 * 32 * d  # posterior to (mu, logvar), z -> memory
    forward = 12 * s * encoder_token + 12 * (s * decoder_token + decoder_sentence) + s * 2 * d * v + heads
    assert forward == 54_668_181_504
    assert forward_flops_per_sentence(shape, s) == forward
    assert training_flops_per_token(shape, s) == 3 * forward / (2 * s) == 640_642_752
    assert shape.parameters == 222_903_552 + 2 * d * 32 + 2 * 32 + d * 32 + d  # published t5-base + VAE heads


def test_stage_0_holds_everything_once_per_rank_in_fp32(tiny):
    # The fp32 parameters are the optimizer's masters (no copy); param.grad and two moments beside them,
    # whole on every rank whatever the world size.
    for world in (1, 2):
        zero = model_state_bytes(tiny, ZeroSetting(stage=0), world, "fp32")
        assert (zero.parameters, zero.gradients, zero.optimizer_states, zero.buffers, zero.host) == (4 * P, 4 * P, 8 * P, 0, 0)
    with pytest.raises(ValueError, match="stage 0 runs fp32 only"):
        model_state_bytes(tiny, ZeroSetting(stage=0), 1, "bf16")
