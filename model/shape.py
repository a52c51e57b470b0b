"""The backbone and VAE heads as numbers: parameter counts and the widths FLOPs and activations need.

Read from the backbone's *config* only (`seq2vae.model.build.backbone_config`: the hub's or a local
directory's config.json, or the debug flavour), never from weights. `model_dims` reads the widths and
depths (all FLOPs need); `model_shape` adds the parameter counts, which are exact: the whole
`Seq2SeqVAE` is built on PyTorch's meta device (no memory, no initialisation), so tied
embeddings, gated FFNs, biases and the configured pooling / injection heads are counted as the real
model has them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch

from .config import VAEConfig

# dtype names a config.json may give (`dtype` in transformers >= 4.56, `torch_dtype` before).
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


@dataclass(frozen=True)
class ModelDims:
    """The widths and depths FLOPs need, read from the configs alone (nothing is built)."""

    family: str  # "t5" or "bart"
    d_model: int  # D
    attention_width: int  # heads x head size (T5's inner_dim; D for BART)
    num_heads: int
    d_ff: int
    encoder_layers: int
    decoder_layers: int
    vocab_size: int
    gated_ffn: bool  # T5 v1.1 / flan "gated-gelu": three FFN matrices instead of two
    latent_dim: int
    memory_states: int
    injection: str
    pooling: str
    gradient_checkpointing: bool
    activation: str  # the FFN's activation by name (T5 dense_act_fn, BART activation_function): what it saves differs
    dropout: float  # the backbone's dropout probability (0: no dropout masks kept for backward)
    ffn_dropout: float  # dropout inside the FFN, after the activation (T5: dropout_rate; BART: activation_dropout)


@dataclass(frozen=True)
class ModelShape(ModelDims):
    """What the planner needs to know about one VAE: its dims and exact parameter counts. Lengths are
    not part of it (see flops.py)."""

    tied_lm_head: bool
    parameters: int  # exact, every parameter once (tied weights once)
    parameter_sizes: tuple[int, ...]  # numel of each parameter (ZeRO-3 partitions each separately)
    largest_module_parameters: int  # most parameters one module owns directly (ZeRO-3 gathers per module)
    checkpoint_dtype_bytes: int  # bytes per parameter of the stored weights (config's dtype; fp32 if unset)


def _attr(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _checkpoint_dtype_bytes(config) -> int:
    dtype = _attr(config, "dtype", "torch_dtype", default="float32")
    return _DTYPE_BYTES.get(str(dtype).removeprefix("torch."), 4)


@contextlib.contextmanager
def _outside_zero3_construction():
    """Inside a ZeRO-3 run (a live HfDeepSpeedConfig) transformers builds every model under
    deepspeed.zero.Init, which would materialise, randomly initialise (drawing from the seeded RNG)
    and partition this count's model; the count wants the plain meta-device build."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def count_on_meta(backbone_config, vae_config: VAEConfig) -> tuple[tuple[int, ...], int, bool]:
    """Builds the VAE on the meta device.

    Returns (numel of every parameter, largest per-module numel, whether the LM head is tied to the
    input embedding). Built as training builds it (model/backbone.py): an untied head (T5 v1.1,
    flan-T5: `tie_word_embeddings: false` in config.json) is counted, though transformers 5 alone ties it.
    """
    from .backbone import backbone_from_config, head_is_untied
    from .vae import Seq2SeqVAE

    with _outside_zero3_construction(), torch.device("meta"):
        backbone = backbone_from_config(backbone_config, head_is_untied(backbone_config))
        vae = Seq2SeqVAE(backbone, vae_config)
    sizes = tuple(parameter.numel() for parameter in vae.parameters())
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in vae.modules())
    output = backbone.get_output_embeddings()
    tied = output is not None and output.weight is backbone.get_input_embeddings().weight
    return sizes, largest, tied


def model_dims(backbone_config, vae_config: VAEConfig) -> ModelDims:
    """The dims of a T5 (incl. v1.1 / flan / mT5) or BART backbone plus the VAE heads of `vae_config`.

    Raises ValueError naming model.backbone for other architectures.
    """
    family = backbone_config.model_type
    if family in ("t5", "mt5", "umt5"):
        shape = dict(
            family="t5",
            d_model=backbone_config.d_model,
            attention_width=backbone_config.num_heads * backbone_config.d_kv,
            num_heads=backbone_config.num_heads,
            d_ff=backbone_config.d_ff,
            encoder_layers=backbone_config.num_layers,
            decoder_layers=_attr(backbone_config, "num_decoder_layers", default=backbone_config.num_layers),
            gated_ffn=bool(getattr(backbone_config, "is_gated_act", False)),
            activation=backbone_config.dense_act_fn,
            dropout=float(backbone_config.dropout_rate),
            ffn_dropout=float(backbone_config.dropout_rate),
        )
    elif family in ("bart", "mbart"):
        if backbone_config.encoder_ffn_dim != backbone_config.decoder_ffn_dim:
            raise ValueError(f"model.backbone: {family} with different encoder/decoder FFN widths is not planned")
        shape = dict(
            family="bart",
            d_model=backbone_config.d_model,
            attention_width=backbone_config.d_model,
            num_heads=backbone_config.encoder_attention_heads,
            d_ff=backbone_config.encoder_ffn_dim,
            encoder_layers=backbone_config.encoder_layers,
            decoder_layers=backbone_config.decoder_layers,
            gated_ffn=False,
            activation=backbone_config.activation_function,
            dropout=float(backbone_config.dropout),
            ffn_dropout=float(backbone_config.activation_dropout),
        )
    else:
        raise ValueError(f"model.backbone: the planner knows T5 and BART backbones, not model_type {family!r}")
    return ModelDims(
        **shape,
        vocab_size=backbone_config.vocab_size,
        latent_dim=vae_config.latent_dim,
        memory_states=vae_config.memory_states if vae_config.injection != "embedding" else 1,
        injection=vae_config.injection,
        pooling=vae_config.pooling,
        gradient_checkpointing=vae_config.gradient_checkpointing,
    )


def model_shape(backbone_config, vae_config: VAEConfig) -> ModelShape:
    """`model_dims` plus exact parameter counts (the VAE built on the meta device)."""
    dims = model_dims(backbone_config, vae_config)
    sizes, largest, tied = count_on_meta(backbone_config, vae_config)
    return ModelShape(
        **dataclasses.asdict(dims),
        tied_lm_head=tied,
        parameters=sum(sizes),
        parameter_sizes=sizes,
        largest_module_parameters=largest,
        checkpoint_dtype_bytes=_checkpoint_dtype_bytes(backbone_config),
    )
