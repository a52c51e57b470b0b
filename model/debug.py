"""The tiny "debug" backbone flavour (2+2 layers, d_model 64) used by tests, CI and CPU smoke runs."""

from __future__ import annotations

from transformers import BartConfig, PretrainedConfig, T5Config

DEBUG_BACKBONES = ("debug-t5", "debug-bart")


def debug_backbone_config(kind: str, tokenizer) -> PretrainedConfig:
    """A randomly initialisable T5 ("t5") or BART ("bart") config sized for a laptop CPU.

    Special-token ids come from `tokenizer`, so any tokenizer (e.g. one trained offline by
    `seq2vae.data.tokenizer.train_tokenizer`) works. T5's LM head is tied to the embedding, as in
    t5-small, so its logits are rescaled by d_model^-0.5 and start near uniform.
    """
    vocab_size = len(tokenizer)
    if kind == "t5":
        return T5Config(
            vocab_size=vocab_size,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    if kind == "bart":
        return BartConfig(
            vocab_size=vocab_size,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_bos_token_id=None,
            forced_eos_token_id=tokenizer.eos_token_id,
        )
    raise ValueError(f"unknown debug backbone kind {kind!r}; valid: t5, bart")
