"""The planner's activation formula against what autograd really saves (CPU, tiny models).

`plan.saved_tensors.measure_saved_bytes` counts every storage saved for backward in one training
forward of the VAE, per layer; `plan.memory.activation_breakdown(device="cpu")` must be within 10% of
it per layer and in all, for T5 with relu, gated gelu_new (Flan-T5's) and gated gelu_pytorch_tanh
FFNs and for BART, in fp32 and bf16, with and without activation checkpointing.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BartConfig, T5Config

from seq2vae.model.config import VAEConfig
from seq2vae.model.shape import model_shape
from seq2vae.model.vae import Seq2SeqVAE
from seq2vae.plan.memory import activation_breakdown
from seq2vae.plan.saved_tensors import measure_saved_bytes

BATCH, LENGTH = 4, 40


def backbone(kind: str, tokenizer):
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if kind == "bart":
        return BartConfig(vocab_size=len(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=128,
                          bos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                          forced_bos_token_id=None, **special)
    projection, activation = {"t5-relu": ("relu", "relu"), "t5-gelu_new": ("gated-gelu", "gelu_new"),
                              "t5-gelu_pytorch_tanh": ("gated-gelu", "gelu_pytorch_tanh")}[kind]
    config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4,
                      feed_forward_proj=projection, decoder_start_token_id=tokenizer.pad_token_id, **special)
    config.dense_act_fn = activation  # "gated-gelu" means gelu_new; Flan-T5 may run the fused tanh GELU instead
    return config


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["t5-relu", "t5-gelu_new", "t5-gelu_pytorch_tanh", "bart"])
def test_planned_activations_are_within_ten_percent_of_the_saved_tensors(kind, precision, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = backbone(kind, tokenizer)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, len(tokenizer), (BATCH, LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    measured = {}
    for checkpointing in (False, True):
        vae_config = VAEConfig(backbone="local", latent_dim=16, gradient_checkpointing=checkpointing)
        vae = Seq2SeqVAE.from_config(config, tokenizer=tokenizer, config=vae_config)
        if precision == "bf16":
            vae = vae.to(torch.bfloat16)
        measured[checkpointing] = measure_saved_bytes(vae, input_ids, attention_mask, input_ids)
        planned = activation_breakdown(model_shape(config, vae_config), BATCH, LENGTH, precision, checkpointing, device="cpu")
        if not checkpointing:
            # Layer 1: layer 0 also keeps the relative-position buckets of T5's bias (a few kB).
            for stack, per_layer in (("encoder", planned.encoder_layer), ("decoder", planned.decoder_layer)):
                got = measured[False].layers(stack)[1]
                assert per_layer == pytest.approx(got, rel=0.10), (stack, per_layer, got)
            total = measured[False].total
        else:
            # What checkpointed layers keep (their inputs), plus one layer live again while recomputed.
            kept = measured[True].layers("encoder")[1]
            assert BATCH * LENGTH * 64 * (2 if precision == "bf16" else 4) <= kept < 0.1 * measured[False].layers("encoder")[1]
            total = measured[True].total + max(measured[False].layers("encoder") + measured[False].layers("decoder"))
        assert planned.total == pytest.approx(total, rel=0.10), (checkpointing, planned, total)
    # A broken count would not tell these apart: checkpointing keeps far less.
    assert measured[True].total < 0.5 * measured[False].total
