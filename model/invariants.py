"""Cheap checks, run at every model build (train, eval, export, generate), that the model is the one configured.

A minor transformers release once made the decoder drop z (prefix injection) and another tied Flan-T5's
LM head to its embedding; training ran, the harness printed numbers, and the numbers described another
model. These checks turn such a release into a one-line refusal that names the installed versions:

- `check_latent_reaches_decoder`: log p(x|z) for z = 0 and z ~ 3 N(0, I) differ (in eval mode, so dropout
  cannot fake a difference), for the configured injection;
- `check_lm_head`: the output layer is tied or untied as the checkpoint stores it, and where untied it
  differs from the embedding;
- `check_gradients` (after the first training step): frozen groups got no gradient, trainable ones did.

All ranks call them together under ZeRO-3 (the forward gathers partitioned parameters collectively).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import UserError
from .backbone import expected_untied, lm_head_is_tied

CHECKED_PACKAGES = ("torch", "transformers", "deepspeed")
# z = 0 against z ~ 3 N(0, I) in one batched call: a decoder that ignores z scores both rows from identical
# inputs (the same values to rounding); one that reads z, even a collapsed one, moves them by far more.
# The bound is relative so it is rounding-sized in any dtype, not a judgement on how much z matters.
LATENT_SCALE = 3.0
RELATIVE_ROUNDING = 1e-6


class ModelInvariantError(UserError, RuntimeError):
    """The built model is not the configured one (a dependency changed behaviour)."""


def installed_versions() -> str:
    """'torch 2.13.0, transformers 5.24.0, deepspeed 0.19.8' (packages not installed are left out)."""
    found = []
    for name in CHECKED_PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _refuse(what: str) -> ModelInvariantError:
    return ModelInvariantError(
        f"{what} with {installed_versions()}; this combination is not supported "
        "(the tested versions are in constraints.txt, the tried ones in docs/COMPATIBILITY.md)"
    )


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def check_latent_reaches_decoder(vae, target_length: int = 6) -> None:
    """Refuses a model whose log p(x|z) does not move with z (`vae` is a Seq2SeqVAE)."""
    parameter = next(vae.parameters())
    generator = torch.Generator().manual_seed(0)
    vocab_size = vae.backbone.config.vocab_size
    labels = torch.randint(4, max(5, vocab_size), (2, target_length), generator=generator).to(parameter.device)
    z = torch.zeros(2, 2, vae.config.latent_dim)  # [B,K,Z]: K=0 row is z = 0, K=1 row z ~ 3 N(0, I)
    z[:, 1] = LATENT_SCALE * torch.randn(2, vae.config.latent_dim, generator=generator)
    with torch.no_grad(), _eval_mode(vae):
        log_px_z = vae.log_likelihood(z.to(parameter.device, parameter.dtype), labels).float()  # [B,K]
    change = (log_px_z[:, 1] - log_px_z[:, 0]).abs().max().item()
    if not change > RELATIVE_ROUNDING * max(1.0, log_px_z.abs().max().item()):
        raise _refuse(
            f"model.injection={vae.config.injection}: log p(x|z) does not change with z (z = 0 and z ~ "
            f"{LATENT_SCALE:g} N(0, I) differ by {change:.2g} nats), so the decoder ignores the latent code"
        )


def check_model(vae, gathered: Callable[[list], contextlib.AbstractContextManager] | None = None) -> None:
    """Every build-time check; `gathered` as in `check_lm_head` (ZeRO-3: call on all ranks)."""
    check_precision(vae)
    check_lm_head(vae, gathered)
    check_latent_reaches_decoder(vae)


# T5-family activations exceed fp16's range (65504) in the feed-forward blocks: inf, then NaN.
FP16_UNSAFE_MODEL_TYPES = ("t5", "mt5", "umt5", "longt5")


def refuse_fp16(model_type: str, dtype: torch.dtype, what: str) -> None:
    """Raises ModelInvariantError when `what` would run a T5-family model in fp16."""
    if dtype == torch.float16 and model_type in FP16_UNSAFE_MODEL_TYPES:
        raise ModelInvariantError(
            f"{what}: fp16 is refused for {model_type} models: T5-family activations overflow fp16's range "
            "(inf, then NaN log-likelihoods); use bf16 or fp32"
        )


def check_precision(vae) -> None:
    dtype = vae.backbone.get_input_embeddings().weight.dtype
    refuse_fp16(vae.backbone.config.model_type, dtype, "evaluating this model")


def check_lm_head(vae, gathered: Callable[[list], contextlib.AbstractContextManager] | None = None) -> None:
    """Refuses a backbone whose LM head is not tied / untied as its checkpoint stores it
    (`backbone.expected_untied`), or whose untied head holds the embedding's values.

    `gathered(params)` makes partitioned parameters whole for the value check (ZeRO-3); without it, a
    parameter with no local values (meta or partitioned) is checked by identity only.
    """
    backbone = vae.backbone
    untied = expected_untied(backbone)
    tied = lm_head_is_tied(backbone)
    if tied == untied:
        state = "tied to" if tied else "separate from"
        raise _refuse(
            f"the LM head of {type(backbone).__name__} is {state} the input embedding, but its checkpoint "
            f"stores it {'untied' if untied else 'tied'}"
        )
    if not untied:
        return
    head, embedding = backbone.get_output_embeddings().weight, backbone.get_input_embeddings().weight
    with (gathered([head, embedding]) if gathered is not None else contextlib.nullcontext()):
        if head.is_meta or head.numel() == 0 or embedding.numel() == 0:
            return
        if torch.equal(head, embedding):
            raise _refuse(
                f"the untied LM head of {type(backbone).__name__} holds exactly the input embedding's values "
                "(the pretrained head was overwritten by the embedding)"
            )


def check_gradients(groups: Mapping[str, Iterable[nn.Parameter]], has_gradient: Callable[[nn.Parameter], bool],
                    frozen: Iterable[str]) -> str:
    """After the first backward: refuses a frozen group with a gradient or a trainable group without one.

    Args:
        groups: `Seq2SeqVAE.parameter_groups()`.
        has_gradient: whether a parameter received a (non-zero) gradient this step.
        frozen: the names of the groups frozen in this phase.
    Returns:
        one line for the log: which groups were checked.
    """
    frozen = set(frozen)
    with_gradient = {name: any(has_gradient(p) for p in params) for name, params in groups.items() if params}
    wrong_frozen = sorted(name for name in frozen if with_gradient.get(name))
    wrong_trainable = sorted(name for name, got in with_gradient.items() if name not in frozen and not got)
    if wrong_frozen or wrong_trainable:
        parts = []
        if wrong_frozen:
            parts.append(f"frozen group(s) {', '.join(wrong_frozen)} received a gradient")
        if wrong_trainable:
            parts.append(f"trainable group(s) {', '.join(wrong_trainable)} received none")
        raise _refuse("after the first step " + " and ".join(parts))
    trainable = sorted(name for name in with_gradient if name not in frozen)
    frozen_checked = sorted(frozen & with_gradient.keys())
    frozen_part = f"frozen {', '.join(frozen_checked)} received none" if frozen_checked else "nothing frozen"
    return f"gradient check after the first step: trainable {', '.join(trainable)} received gradients; {frozen_part}"
