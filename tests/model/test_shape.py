"""Parameter counts from the backbone's config alone, checked against hand counts and built models."""

from __future__ import annotations

import torch
from transformers import AutoConfig

from seq2vae.model import VAEConfig, build_vae
from seq2vae.model.build import backbone_config
from seq2vae.model.shape import model_shape

# The tiny T5 of conftest.TINY_T5, counted by hand:
#   shared embedding 100 x 8                                          =  800 (LM head tied: 0)
#   encoder layer: q,k,v,o 4 x 8x8 = 256, relative bias 32 x 2 = 64,
#                  norm 8, FFN wi 8x16 + wo 16x8 = 256, norm 8           =  592
#   encoder final norm                                                 =    8
#   decoder layer: self-attention 256 + bias 64 + norm 8, cross-attention
#                  256 + norm 8, FFN 256 + norm 8                        =  856
#   decoder final norm                                                 =    8
#   backbone                                                           = 2264
#   VAE heads (latent 4, memory injection, M = 1): posterior Linear(8, 2x4) 64 + 8,
#                  latent_to_memory Linear(4, 8) 32 + 8                  =  112
TINY_T5_VAE_PARAMETERS = 2264 + 112


def test_tiny_t5_parameter_count_matches_the_hand_count(backbone_dirs):
    vae = VAEConfig(backbone=str(backbone_dirs["tiny-t5"]), latent_dim=4, memory_states=1)
    shape = model_shape(AutoConfig.from_pretrained(backbone_dirs["tiny-t5"]), vae)
    assert shape.parameters == TINY_T5_VAE_PARAMETERS
    assert (shape.d_model, shape.attention_width, shape.d_ff, shape.gated_ffn, shape.tied_lm_head) == (8, 8, 16, False, True)
    assert shape.largest_module_parameters == 800  # the shared embedding
    # Each extra memory state adds a D-wide block of latent_to_memory (4 x 8 weights + 8 biases);
    # attention pooling adds its D-wide query.
    wider = model_shape(AutoConfig.from_pretrained(backbone_dirs["tiny-t5"]),
                        VAEConfig(backbone="x", latent_dim=4, memory_states=3, pooling="attention"))
    assert wider.parameters == TINY_T5_VAE_PARAMETERS + 2 * (32 + 8) + 8


def test_gated_flan_t5_xxl_counts_its_untied_lm_head(backbone_dirs):
    shape = model_shape(AutoConfig.from_pretrained(backbone_dirs["flan-t5-xxl"]),
                        VAEConfig(backbone="x", latent_dim=64, memory_states=4))
    d, f, a, v, layers = 4096, 10240, 64 * 64, 32128, 24
    attention, ffn, bias = 4 * d * a, 3 * d * f, 32 * 64  # gated-GELU: wi_0, wi_1, wo
    encoder = layers * (attention + ffn + 2 * d) + bias + d
    decoder = layers * (2 * attention + ffn + 3 * d) + bias + d
    # flan-T5's config.json says tie_word_embeddings: false: its separate LM head is another V x D =
    # 131.6M parameters. transformers 5 alone would tie it; the model is built as training builds it.
    backbone = 2 * v * d + encoder + decoder
    heads = (d * 128 + 128) + (64 * 4 * d + 4 * d)
    assert shape.parameters == backbone + heads
    assert 11.13e9 < shape.parameters < 11.14e9
    assert shape.gated_ffn and not shape.tied_lm_head and shape.checkpoint_dtype_bytes == 4


def test_meta_count_equals_the_built_debug_models(tokenizer_dir):
    for kind in ("t5", "bart"):
        config = VAEConfig(backbone=f"debug-{kind}", tokenizer=str(tokenizer_dir), latent_dim=16, injection="both",
                           memory_states=2)
        torch.manual_seed(0)
        built = sum(p.numel() for p in build_vae(config).parameters())
        assert model_shape(backbone_config(config), config).parameters == built
