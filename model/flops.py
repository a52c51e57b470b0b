"""Model FLOPs of the VAE, counted from its shape: matrix multiplications only, 2 FLOPs per multiply-add.

One sentence of S source tokens is encoded, pooled into z, and its T = S target tokens (the VAE
reconstructs its input) are decoded while cross-attending to M memory states projected from z:

    encoder, per layer and source token:   2 (4 D A) projections q,k,v,o + 2 (2 S A) scores and values
                                          + 2 (f D F) FFN (f = 3 gated, 2 otherwise)
    decoder, per layer and target token:   self-attention as above with T + cross-attention q,o
                                          2 (2 D A) + 2 (2 M A) scores and values + FFN
    decoder, per layer and sentence:       cross-attention k,v of the M memory states, 2 (2 M D A)
    LM head, per target token:             2 D V
    VAE heads, per sentence:               posterior 2 D 2Z, z -> memory 2 Z M D, z -> embedding 2 Z D,
                                          attention pooling 2 S D

with D = d_model, A = heads x head size, F = d_ff, V = vocabulary. Attention is counted over the
full square (the causal mask saves no work in the kernels used). Training is 3 x the forward (the
backward costs two forwards); recomputation under gradient checkpointing is *not* counted, so MFU
measures useful work ("model FLOPs", as in the PaLM paper), not hardware FLOPs. Per token means per
source + target token, the tokens the trainer's tokens/s counts.
"""

from __future__ import annotations

from .shape import ModelDims


def forward_flops_per_sentence(shape: ModelDims, source_length: int) -> float:
    """Forward FLOPs of one sentence of `source_length` tokens (target length = source length)."""
    d, a, f, v = shape.d_model, shape.attention_width, shape.d_ff, shape.vocab_size
    s = t = source_length
    m = shape.memory_states
    ffn_matrices = 3 if shape.gated_ffn else 2
    ffn = 2 * ffn_matrices * d * f
    encoder_token = 2 * 4 * d * a + 2 * 2 * s * a + ffn
    decoder_token = 2 * 4 * d * a + 2 * 2 * t * a + 2 * 2 * d * a + 2 * 2 * m * a + ffn
    decoder_sentence = 2 * 2 * m * d * a
    heads = 2 * d * 2 * shape.latent_dim
    if shape.injection in ("memory", "both"):
        heads += 2 * shape.latent_dim * shape.memory_states * d
    if shape.injection in ("embedding", "both"):
        heads += 2 * shape.latent_dim * d
    if shape.pooling == "attention":
        heads += 2 * s * d
    return (
        shape.encoder_layers * s * encoder_token
        + shape.decoder_layers * (t * decoder_token + decoder_sentence)
        + t * 2 * d * v
        + heads
    )


def training_flops_per_token(shape: ModelDims, source_length: int) -> float:
    """Model FLOPs per (source + target) token of one training step: 3 x forward."""
    return 3 * forward_flops_per_sentence(shape, source_length) / (2 * source_length)
