"""Prefix injection (model/prefix.py): z as a self-attention key/value slot per decoder layer, for T5 and BART."""

from __future__ import annotations

import json

import pytest
import torch

from seq2vae.model import Seq2SeqVAE, VAEConfig, build_vae


def build_prefix_vae(kind: str, tokenizer_dir, injection: str = "prefix", **settings) -> Seq2SeqVAE:
    torch.manual_seed(0)
    config = VAEConfig(
        backbone=f"debug-{kind}", tokenizer=str(tokenizer_dir), latent_dim=16, injection=injection, **settings
    )
    return build_vae(config)


@pytest.fixture(params=[("t5", "prefix"), ("bart", "prefix"), ("t5", "prefix_embedding"), ("bart", "prefix_embedding")],
                ids=lambda p: "-".join(p))
def prefix_vae(request, tokenizer_dir) -> Seq2SeqVAE:
    kind, injection = request.param
    return build_prefix_vae(kind, tokenizer_dir, injection).eval()


def cross_attention_parameters(vae: Seq2SeqVAE) -> list[torch.nn.Parameter]:
    names = ("EncDecAttention", "encoder_attn")  # T5, BART
    return [p for n, p in vae.backbone.get_decoder().named_parameters() if any(k in n for k in names)]


def test_projection_shape_and_parameter_group(prefix_vae):
    injection = prefix_vae.latent_to_prefix
    config = prefix_vae.backbone.config
    layers = getattr(config, "num_decoder_layers", None) or config.decoder_layers
    assert injection.projection.weight.shape == (layers * injection.num_heads * injection.head_dim, 16)
    assert prefix_vae.latent_to_memory is None
    assert (prefix_vae.latent_to_embedding is not None) == (prefix_vae.config.injection == "prefix_embedding")
    latent_ids = {id(p) for p in prefix_vae.parameter_groups()["latent"]}
    assert id(injection.projection.weight) in latent_ids
    assert injection(torch.zeros(3, 16)).shape == (layers, 3, injection.num_heads, 1, injection.head_dim)


def test_padding_never_changes_the_real_positions(prefix_vae, make_batch, sentences):
    z = torch.randn(1, 16, generator=torch.Generator().manual_seed(1))
    short = make_batch(prefix_vae.tokenizer, sentences[:1])
    padded = make_batch(prefix_vae.tokenizer, sentences[:1], pad_to=short["labels"].shape[1] + 6)
    mixed = make_batch(prefix_vae.tokenizer, [sentences[0], sentences[0] + " and a cat sat on the mat"])
    length = short["labels"].shape[1]
    with torch.no_grad():
        logits_short = prefix_vae.decode_logits(z, short["labels"])
        logits_padded = prefix_vae.decode_logits(z, padded["labels"])
        logits_mixed = prefix_vae.decode_logits(z.expand(2, -1), mixed["labels"])
        ll_short = prefix_vae.log_likelihood(z, short["labels"])
        ll_padded = prefix_vae.log_likelihood(z, padded["labels"])
    assert mixed["labels"].shape[1] > length  # the first row really is padded by its neighbour
    torch.testing.assert_close(logits_padded[:, :length], logits_short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_mixed[:1, :length], logits_short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ll_padded, ll_short, rtol=1e-5, atol=1e-4)


def test_log_likelihood_depends_on_z_through_the_prefix_only(prefix_vae, make_batch):
    batch = make_batch(prefix_vae.tokenizer)
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = prefix_vae.log_likelihood(z, batch["labels"])
        moved = prefix_vae.log_likelihood(z + 1.0, batch["labels"])
        assert (base - moved).abs().min() > 1e-3  # every sentence's likelihood moves with z
        # Cross-attention is switched off: scrambling its weights changes nothing.
        for parameter in cross_attention_parameters(prefix_vae):
            parameter.add_(torch.randn_like(parameter))
        assert cross_attention_parameters(prefix_vae)
        torch.testing.assert_close(prefix_vae.log_likelihood(z, batch["labels"]), base)
        if prefix_vae.latent_to_embedding is None:
            # Without embedding injection the prefix is z's only way in: a zero projection removes z.
            prefix_vae.latent_to_prefix.projection.weight.zero_()
            torch.testing.assert_close(
                prefix_vae.log_likelihood(z, batch["labels"]), prefix_vae.log_likelihood(z + 1.0, batch["labels"])
            )


def test_many_z_per_sentence_in_one_call_equal_per_sample_calls(prefix_vae, make_batch):
    batch = make_batch(prefix_vae.tokenizer)
    z = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(3))  # [B,K,Z]
    with torch.no_grad():
        batched = prefix_vae.log_likelihood(z, batch["labels"])
        separate = torch.stack([prefix_vae.log_likelihood(z[:, k], batch["labels"]) for k in range(4)], dim=1)
        one_by_one = torch.tensor(
            [[prefix_vae.log_likelihood(z[b, k][None], batch["labels"][b : b + 1]).item() for k in range(4)]
             for b in range(3)]
        )
    assert batched.shape == (3, 4)
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-4)


def _generated_labels(ids: torch.Tensor, eos: int) -> tuple[torch.Tensor, list[int]]:
    """Generated ids [B,1+N] -> teacher-forcing labels [B,N] (-100 after the first EOS), and lengths."""
    labels, lengths = ids[:, 1:].clone(), []
    for row in labels:
        hits = (row == eos).nonzero()
        length = int(hits[0]) + 1 if len(hits) else row.shape[0]
        row[length:] = -100
        lengths.append(length)
    return labels, lengths


def test_greedy_generation_keeps_the_prefix_and_matches_teacher_forcing(prefix_vae):
    """Each greedy step's logits equal teacher forcing on the generated sequence, so the prefix stays in
    the KV cache while tokens are generated (with the same position and mask as in training)."""
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(4)) * 2
    out = prefix_vae.generate(z, max_new_tokens=10, output_logits=True, return_dict_in_generate=True)
    labels, lengths = _generated_labels(out.sequences, prefix_vae.backbone.config.eos_token_id)
    step_logits = torch.stack(out.logits, dim=1)  # [B,N,V] raw logits, before any logits processor
    with torch.no_grad():
        forced = prefix_vae.decode_logits(z, labels)
        log_px_z = prefix_vae.log_likelihood(z, labels)
    greedy_log_probs = []
    for row, length in enumerate(lengths):
        torch.testing.assert_close(step_logits[row, :length], forced[row, :length], rtol=1e-4, atol=1e-4)
        chosen = labels[row, :length]
        greedy_log_probs.append(step_logits[row, :length].log_softmax(-1).gather(-1, chosen[:, None]).sum())
    torch.testing.assert_close(torch.stack(greedy_log_probs), log_px_z, rtol=1e-4, atol=1e-3)
    # Beams and sampling expand the prefix to every beam / returned sequence.
    assert prefix_vae.generate(z, max_new_tokens=6, num_beams=3).shape[0] == 3
    sampled = prefix_vae.generate(z, max_new_tokens=6, do_sample=True, num_return_sequences=2)
    assert sampled.shape[0] == 6


def test_save_and_load_give_identical_outputs(prefix_vae, make_batch, tmp_path):
    batch = make_batch(prefix_vae.tokenizer)
    prefix_vae.save_pretrained(tmp_path / "model")
    record = json.loads((tmp_path / "model" / "vae_config.json").read_text())
    assert record["vae"]["injection"] == prefix_vae.config.injection
    loaded = Seq2SeqVAE.from_pretrained(tmp_path / "model").eval()
    assert loaded.config == prefix_vae.config
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode_logits(z, batch["labels"]), prefix_vae.decode_logits(z, batch["labels"]))
    assert torch.equal(loaded.generate(z, max_new_tokens=8), prefix_vae.generate(z, max_new_tokens=8))


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(kind, tokenizer_dir, make_batch):
    """transformers drops the cache in checkpointed layers unless told the layer only reads it; the
    prefix must survive that, and the replayed forward must not append the prefix twice."""
    plain = build_prefix_vae(kind, tokenizer_dir).train()
    checkpointed = build_prefix_vae(kind, tokenizer_dir, gradient_checkpointing=True).train()
    assert all(layer.gradient_checkpointing for layer in checkpointed.backbone.get_decoder().modules()
               if hasattr(layer, "_can_checkpoint_with_cache"))
    batch = make_batch(plain.tokenizer)
    losses = {}
    for name, vae in (("plain", plain), ("checkpointed", checkpointed)):
        torch.manual_seed(7)  # same dropout masks and z noise in both
        out = vae(**batch)
        losses[name] = (out.recon_nll + out.kl).mean()
        losses[name].backward()
    torch.testing.assert_close(losses["checkpointed"], losses["plain"])
    grads = {n: p.grad for n, p in checkpointed.named_parameters() if p.grad is not None}
    plain_grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads.keys() == plain_grads.keys()
    assert grads["latent_to_prefix.projection.weight"].abs().sum() > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
