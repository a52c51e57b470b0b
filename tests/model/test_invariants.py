"""Build-time invariants (model/invariants.py) and the fp32 latent side (model/precision.py)."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers
from transformers.models.bart.modeling_bart import BartDecoder
from transformers.models.t5.modeling_t5 import T5Stack

from seq2vae.cli import main as cli_main
from seq2vae.model import Seq2SeqVAE, VAEConfig, build_vae
from seq2vae.model.invariants import (
    ModelInvariantError,
    check_gradients,
    check_latent_reaches_decoder,
    check_lm_head,
    check_model,
)
from seq2vae.model.prefix import cache_keyword

INJECTIONS = ("memory", "embedding", "both", "prefix", "prefix_embedding")


def tiny(kind, tokenizer_dir, injection="memory"):
    torch.manual_seed(0)
    return build_vae(VAEConfig(backbone=f"debug-{kind}", tokenizer=str(tokenizer_dir), latent_dim=16, injection=injection))


@pytest.mark.parametrize("kind", ["t5", "bart"])
@pytest.mark.parametrize("injection", INJECTIONS)
def test_every_injection_mode_makes_log_p_x_given_z_depend_on_z(kind, injection, tokenizer_dir, make_batch):
    vae = tiny(kind, tokenizer_dir, injection).eval()
    labels = make_batch(vae.tokenizer)["labels"]
    z = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(0)) * 3  # [B,K,Z]
    with torch.no_grad():
        log_px_z = vae.log_likelihood(z, labels)  # [B,K]
        at_zero = vae.log_likelihood(torch.zeros(3, 16), labels)  # [B]
    # Exactly equal when z is ignored; a random prefix slot among T keys may move a sentence only a little.
    assert (log_px_z[:, 0] - log_px_z[:, 1]).abs().min() > 1e-5
    assert (log_px_z[:, 0] - at_zero).abs().min() > 1e-5
    check_model(vae)  # and the startup check agrees


def _ignoring_z(forward):
    """A decoder forward that loses z the way transformers 5.24 did (drops the cache) and also loses the
    cross-attention memory (replaced by zeros)."""

    @functools.wraps(forward)
    def patched(self, *args, **kwargs):
        if getattr(self, "is_decoder", True) and not getattr(self.config, "is_encoder", False):
            kwargs.pop(cache_keyword(self), None)
            if kwargs.get("encoder_hidden_states") is not None:
                kwargs["encoder_hidden_states"] = torch.zeros_like(kwargs["encoder_hidden_states"])
        return forward(self, *args, **kwargs)

    return patched


@pytest.mark.parametrize("injection", ["prefix", "memory"])
@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_a_decoder_that_ignores_z_is_refused_with_one_line(kind, injection, tokenizer_dir, monkeypatch):
    vae = tiny(kind, tokenizer_dir, injection)
    check_latent_reaches_decoder(vae)
    stack = T5Stack if kind == "t5" else BartDecoder
    monkeypatch.setattr(stack, "forward", _ignoring_z(stack.forward))
    with pytest.raises(ModelInvariantError) as refused:
        check_latent_reaches_decoder(vae)
    message = str(refused.value)
    assert "\n" not in message
    assert f"model.injection={injection}" in message and f"transformers {transformers.__version__}" in message
    assert f"torch {torch.__version__.split('+')[0]}" in message


def test_generate_command_refuses_a_model_whose_decoder_ignores_z(tiny_t5_dir, tokenizer_dir, tmp_path, monkeypatch,
                                                                  capsys):
    model_dir = tiny("t5", tokenizer_dir, "prefix").save_pretrained(tmp_path / "prefix-model")
    assert cli_main(["generate", "--model", str(model_dir), "--sample", "1"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(T5Stack, "forward", _ignoring_z(T5Stack.forward))
    assert cli_main(["generate", "--model", str(model_dir), "--sample", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # not transformers' bars
    assert len(errors) == 1 and errors[0].startswith("seq2vae generate: error: model.injection=prefix"), errors
    assert "does not change with z" in errors[0]


def test_a_head_tied_against_its_checkpoint_is_refused(flan_like_dir):
    vae = build_vae(VAEConfig(backbone=str(flan_like_dir), latent_dim=8))
    check_lm_head(vae)
    with torch.no_grad():
        vae.backbone.lm_head.weight.copy_(vae.backbone.shared.weight)
    with pytest.raises(ModelInvariantError, match="holds exactly the input embedding"):
        check_lm_head(vae)
    vae.backbone.lm_head.weight = vae.backbone.shared.weight
    with pytest.raises(ModelInvariantError, match="tied to the input embedding"):
        check_lm_head(vae)


def test_gradient_check_after_a_real_backward(tokenizer_dir, make_batch):
    vae = tiny("t5", tokenizer_dir).train()
    groups = vae.parameter_groups()
    for parameter in groups["decoder"]:
        parameter.requires_grad_(False)
    out = vae(**make_batch(vae.tokenizer))
    (out.recon_nll + out.kl).mean().backward()

    def has_gradient(parameter):
        return parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)

    line = check_gradients(groups, has_gradient, frozen=["decoder"])
    assert line == ("gradient check after the first step: trainable embeddings, encoder, latent, posterior received "
                    "gradients; frozen decoder received none")
    with pytest.raises(ModelInvariantError, match="frozen group\\(s\\) encoder received a gradient"):
        check_gradients(groups, has_gradient, frozen=["decoder", "encoder"])
    with pytest.raises(ModelInvariantError, match="trainable group\\(s\\) decoder received none"):
        check_gradients(groups, has_gradient, frozen=[])


def test_fp16_t5_is_refused_and_bf16_keeps_the_latent_side_in_fp32(tiny_t5_dir, tokenizer_dir, tmp_path, make_batch):
    Seq2SeqVAE.from_pretrained(tiny_t5_dir).half().save_pretrained(tmp_path / "fp16")
    with pytest.raises(ModelInvariantError, match="fp16 is refused for t5"):
        Seq2SeqVAE.from_pretrained(tmp_path / "fp16")

    vae = tiny("t5", tokenizer_dir).to(torch.bfloat16).eval()
    batch = make_batch(vae.tokenizer)
    torch.manual_seed(0)
    out = vae(**batch)
    assert out.mu.dtype == out.logvar.dtype == out.z.dtype == out.kl.dtype == torch.float32
    # A small sigma next to mu ~ 1: bf16 (8 significant bits) would round z back to mu.
    mu = torch.ones(4, 16)
    logvar = torch.full((4, 16), -12.0)  # sigma = exp(-6) ~ 0.0025 < bf16's spacing 0.0078 at 1
    generator = torch.Generator().manual_seed(1)
    z = vae.reparameterize(mu.bfloat16(), logvar.bfloat16(), generator=generator)
    noise = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, mu + torch.exp(torch.tensor(-6.0)) * noise)
    assert (z != 1.0).all()
    assert (mu.bfloat16() + (torch.exp(torch.tensor(-6.0)) * noise).bfloat16() == 1.0).float().mean() > 0.5
