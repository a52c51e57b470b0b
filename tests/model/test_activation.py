"""Flan-T5's `gelu_new` is swapped for the fused `gelu_pytorch_tanh`: same function, fewer kernels."""

from __future__ import annotations

import torch
from transformers import T5Config
from transformers.activations import ACT2FN

from seq2vae.model.build import backbone_config
from seq2vae.model.config import VAEConfig, with_fused_activation


def test_fused_tanh_gelu_equals_gelu_new_to_rounding():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1 << 16, generator=generator, dtype=torch.float64) * 4  # tails included
    new, fused = ACT2FN["gelu_new"], ACT2FN["gelu_pytorch_tanh"]
    reference = new(x)  # float64: the formula itself
    assert torch.allclose(fused(x.float()).double(), reference, rtol=1e-6, atol=1e-6)
    # On bf16 inputs the fused kernel computes in fp32 and rounds once: within one bf16 step (2^-8
    # relative) of the exact value. gelu_new runs its ~5 ops in bf16 and strays further (to 0 near x=-3).
    xb = x.bfloat16()
    exact = new(xb.double())
    step = exact.abs() * 2**-8 + 2**-20  # + an absolute floor for the far negative tail (-> 0)
    assert bool(((fused(xb).double() - exact).abs() <= step).all())
    assert bool(((new(xb).double() - exact).abs() > step).any()), "gelu_new in bf16 is the less exact one"
    assert not torch.equal(fused(xb), ACT2FN["gelu"](xb)), "the exact erf GELU is another function"


def test_flan_style_configs_get_the_fused_activation(tokenizer_dir):
    flan = T5Config(d_model=64, d_ff=128, num_layers=1, num_heads=2, d_kv=32, feed_forward_proj="gated-gelu")
    assert flan.dense_act_fn == "gelu_new"
    assert with_fused_activation(flan).dense_act_fn == "gelu_pytorch_tanh"
    relu = T5Config(feed_forward_proj="relu")
    assert with_fused_activation(relu).dense_act_fn == "relu"
    debug = backbone_config(VAEConfig(backbone="debug-t5", tokenizer=str(tokenizer_dir)))
    assert debug.dense_act_fn == "gelu_pytorch_tanh"
