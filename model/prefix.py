"""Prefix injection: z as one extra self-attention key/value slot in every decoder layer.

This is how the reference T5-VAE (and Optimus, for GPT-2) gives z to the decoder: one
`Linear(Z, layers x heads x head_dim)`, reshaped to one slot per layer, the same tensor used as key and
value, and the decoder's cross-attention switched off. Here the slot is put in front of the decoder's
own keys/values through the Hugging Face cache, exactly as if it were one already-decoded token:

- position: the prefix is position 0 and the target tokens sit at 1..T. T5's relative position bias
  then sees the prefix at distance -(i+1) from target i (relative distances between targets are
  unchanged); BART's learned positions are offset by the cache length, so target i uses position i+1.
  This is what the reference code got from transformers 4.x (past length 1) and what Optimus gets from
  GPT-2 (`position_ids` start at the past length).
- masking: the causal mask is built over 1 + T keys, so every target position (padding included)
  attends to the prefix; padding sits after the real tokens, so it never changes a real position.
- cross-attention: a forward pre-hook on the decoder stack drops `encoder_hidden_states`, so T5's and
  BART's decoder layers skip their cross-attention block (BART's post-norm included) altogether.

Which keyword carries the cache is read from the installed decoder's `forward` signature
(`cache_keyword`): transformers 5.24 renamed `past_key_values` to `cache` and, when both are given,
drops `past_key_values` with only a warning, which silently removed z from the decoder. The hook
therefore never passes the deprecated name where the new one exists, and `model/invariants.py`
checks at every model build that log p(x|z) still moves with z.

Two caches, because training and generation need different things:
- teacher forcing gets a read-only cache (`_ReadOnlyPrefixLayer`) that prepends the prefix and
  stores nothing; calling the layer twice gives the same result, so activation checkpointing may
  replay it. transformers drops `past_key_values` in checkpointed layers unless the layer is marked
  `_can_checkpoint_with_cache` (meant for layers that only read the cache, under either keyword);
  `PrefixInjection` marks
  the decoder's layers, which is safe only because of this read-only cache.
- generation keeps `generate`'s own growing cache: on the first decoder call (empty cache) the hook
  writes the prefix into it, expanded to beams / returned sequences, so it stays in the KV cache while
  tokens are generated and is reordered with the beams.

Shape legend: B batch, T target length, Z latent, L decoder layers, H heads, Dh head width.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import Cache, DynamicLayer, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer

from .precision import Float32Linear
from .reference_compat import reference_prefix_reshape


def decoder_attention_shape(config: PretrainedConfig) -> tuple[int, int, int]:
    """(decoder layers L, self-attention heads H, head width Dh) of a T5- or BART-family backbone."""
    if hasattr(config, "num_decoder_layers") and hasattr(config, "d_kv"):  # T5, mT5, UMT5
        return config.num_decoder_layers, config.num_heads, config.d_kv
    if hasattr(config, "decoder_layers") and hasattr(config, "decoder_attention_heads"):  # BART, mBART, ...
        return config.decoder_layers, config.decoder_attention_heads, config.d_model // config.decoder_attention_heads
    raise ValueError(
        f"model.injection=prefix: cannot read the decoder's layer/head sizes from a {config.model_type!r} config "
        "(supported: T5- and BART-family backbones)"
    )


# The decoder keyword that carries the key/value cache, newest first: transformers 5.24 renamed
# `past_key_values` (kept as a deprecated alias that loses to the new name) to `cache`.
CACHE_KEYWORDS = ("cache", "past_key_values")


def cache_keyword(decoder: nn.Module) -> str:
    """The name under which the installed `decoder.forward` takes its key/value cache.

    Read from the signature (decorators built with functools.wraps expose the real parameters), so a
    rename upstream is followed instead of sending the cache through an alias that gets dropped.
    """
    parameters = inspect.signature(decoder.forward).parameters
    for name in CACHE_KEYWORDS:
        if name in parameters:
            return name
    raise ValueError(
        f"model.injection=prefix: {type(decoder).__name__}.forward takes none of {', '.join(CACHE_KEYWORDS)} "
        f"(its parameters: {', '.join(parameters)}); this transformers release is not supported"
    )


class _ReadOnlyPrefixLayer(DynamicLayer):
    """One layer's prefix; `update` returns prefix + new states and stores nothing (replay-safe)."""

    def __init__(self, prefix: torch.Tensor):  # [B,H,1,Dh]
        super().__init__()
        self.keys = self.values = prefix
        self.dtype, self.device = prefix.dtype, prefix.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class PrefixInjection(nn.Module):
    """z [B,Z] -> one key/value slot per decoder layer, and the hook that feeds it to the decoder."""

    def __init__(self, latent_dim: int, backbone_config: PretrainedConfig, reference_reshape: bool = False):
        super().__init__()
        self.reference_reshape = reference_reshape  # model.reference_compat.prefix_reshape
        self.num_layers, self.num_heads, self.head_dim = decoder_attention_shape(backbone_config)
        # No bias, as in the reference: the slot is a function of z alone.
        self.projection = Float32Linear(latent_dim, self.num_layers * self.num_heads * self.head_dim, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B,Z] -> prefix [L,B,H,1,Dh] (one slot per layer; used as both key and value)."""
        batch = z.shape[0]
        if self.reference_reshape:
            return reference_prefix_reshape(self.projection(z), self.num_layers, self.num_heads, self.head_dim)
        # Per-sentence reshape first: the reference reshapes [B, L*H*Dh] straight to [L,B,...], which mixes
        # sentences' projections whenever B > 1.
        prefix = self.projection(z).view(batch, self.num_layers, self.num_heads, 1, self.head_dim)
        return prefix.transpose(0, 1)

    @staticmethod
    def allow_checkpointed_layers(decoder: nn.Module) -> None:
        """Lets activation-checkpointed decoder layers keep `past_key_values` (see the module docstring)."""
        for module in decoder.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module._can_checkpoint_with_cache = True

    @contextlib.contextmanager
    def attached(self, decoder: nn.Module, z: torch.Tensor, dtype: torch.dtype):
        """While active, every call of `decoder` sees z's prefix (in the decoder's `dtype`) and no encoder states."""
        prefix = self(z).to(dtype)  # [L,B,H,1,Dh]
        keyword = cache_keyword(decoder)

        def expanded(batch: int) -> torch.Tensor:
            return prefix.repeat_interleave(batch // prefix.shape[1], dim=1)  # beams / returned sequences

        def inject(module, args, kwargs):
            assert not args, "the prefix hook expects the decoder to be called with keyword arguments"
            inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
            kwargs["encoder_hidden_states"] = None
            kwargs["encoder_attention_mask"] = None
            cache = kwargs.get(keyword)
            if cache is None:  # teacher forcing (or generation without a cache): a read-only prefix
                layers = [_ReadOnlyPrefixLayer(slot) for slot in expanded(inputs.shape[0])]
                kwargs[keyword] = Cache(layers=layers)
            else:  # generation: write the prefix once, before the first token, into generate's own cache
                self_attention = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
                if self_attention.get_seq_length() == 0:
                    for layer_index, slot in enumerate(expanded(inputs.shape[0])):
                        self_attention.update(slot, slot, layer_index)
            return args, kwargs

        handle = decoder.register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
