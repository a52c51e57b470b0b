"""Seq2SeqVAE: outputs, padding invariance, the decoder's dependence on z alone, persistence."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from seq2vae.config import ConfigError
from seq2vae.model import Seq2SeqVAE, VAEConfig, build_vae, gaussian_kl_per_dim


def test_forward_outputs_have_documented_shapes_and_values(tiny_vae, make_batch):
    batch = make_batch(tiny_vae.tokenizer)
    torch.manual_seed(0)
    out = tiny_vae(**batch)
    num_sentences, target_length = batch["labels"].shape
    latent = tiny_vae.config.latent_dim
    assert out.mu.shape == out.logvar.shape == out.z.shape == (num_sentences, latent)
    assert out.kl_per_dim.shape == (num_sentences, latent)
    assert out.logits.shape == (num_sentences, target_length, len(tiny_vae.tokenizer))
    assert out.num_tokens.tolist() == (batch["labels"] != -100).sum(1).tolist()
    # KL is the analytic Gaussian KL, summed over dimensions; non-negative.
    expected_kl = 0.5 * (out.mu**2 + out.logvar.exp() - 1 - out.logvar).sum(-1)
    torch.testing.assert_close(out.kl, expected_kl)
    assert (out.kl >= 0).all()
    # Reconstruction NLL is the token cross-entropy summed over non-padding targets, per sentence.
    log_probs = out.logits.log_softmax(-1)
    for i in range(num_sentences):
        keep = batch["labels"][i] != -100
        manual = -log_probs[i, keep].gather(-1, batch["labels"][i, keep, None]).sum()
        torch.testing.assert_close(out.recon_nll[i], manual, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "attention"])
def test_every_pooling_ignores_padding(pooling, tiny_t5_dir, make_batch, sentences):
    vae = Seq2SeqVAE.from_pretrained(tiny_t5_dir).eval()
    vae.config.pooling = pooling
    from seq2vae.model.pooling import Pooler

    torch.manual_seed(1)
    vae.pooler = Pooler(pooling, vae.backbone.config.d_model)
    if pooling == "attention":
        torch.nn.init.normal_(vae.pooler.query)  # a non-trivial query, so the weights really vary
    short = make_batch(vae.tokenizer, sentences[:1])
    padded = make_batch(vae.tokenizer, sentences[:1], pad_to=short["input_ids"].shape[1] + 7)
    mixed = make_batch(vae.tokenizer, sentences)  # padded by longer neighbours
    with torch.no_grad():
        mu_short, logvar_short = vae.encode(short["input_ids"], short["attention_mask"])
        mu_padded, _ = vae.encode(padded["input_ids"], padded["attention_mask"])
        mu_mixed, _ = vae.encode(mixed["input_ids"], mixed["attention_mask"])
    torch.testing.assert_close(mu_padded, mu_short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mu_mixed[:1], mu_short, rtol=1e-5, atol=1e-5)


def test_pooling_modes_differ():
    """The modes are really different computations (guards against a mode silently aliasing another)."""
    from seq2vae.model.pooling import Pooler

    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    results = {mode: Pooler(mode, 8)(hidden, mask) for mode in ("mean", "max", "first")}
    torch.testing.assert_close(results["mean"][0], hidden[0, :3].mean(0))
    torch.testing.assert_close(results["max"][0], hidden[0, :3].amax(0))
    torch.testing.assert_close(results["first"][1], hidden[1, 0])


def test_decoder_depends_on_z(tiny_vae, make_batch):
    batch = make_batch(tiny_vae.tokenizer)
    latent = tiny_vae.config.latent_dim
    with torch.no_grad():
        logits_a = tiny_vae.decode_logits(torch.zeros(3, latent), batch["labels"])
        logits_b = tiny_vae.decode_logits(torch.ones(3, latent) * 3, batch["labels"])
    assert (logits_a - logits_b).abs().max() > 1e-3


@pytest.mark.parametrize("injection", ["memory", "embedding", "both"])
def test_nothing_but_z_reaches_the_decoder(injection, tokenizer_dir, make_batch):
    """With z fixed, changing the encoder input cannot change the decoder's output."""
    torch.manual_seed(0)
    vae = build_vae(VAEConfig(backbone="debug-t5", tokenizer=str(tokenizer_dir), latent_dim=16, injection=injection)).eval()
    batch = make_batch(vae.tokenizer)
    z = torch.randn(3, 16)
    with torch.no_grad():
        logits = vae.decode_logits(z, batch["labels"])
        other_z = vae.decode_logits(z + 1, batch["labels"])
        # Same z, completely different encoder input: identical logits (decode_logits never sees input_ids).
        out = vae(batch["input_ids"].flip(0), batch["attention_mask"].flip(0), batch["labels"], sample=False)
        from_mu = vae.decode_logits(out.mu, batch["labels"])
    torch.testing.assert_close(out.logits, from_mu)
    assert (logits - other_z).abs().max() > 1e-4
    # The encoder's token states are not the decoder memory: the memory has M states, not S.
    encoder_outputs, mask = vae._memory(z)
    expected_states = vae.config.memory_states if injection != "embedding" else 1
    assert encoder_outputs.last_hidden_state.shape == (3, expected_states, vae.backbone.config.d_model)
    if injection == "embedding":
        assert encoder_outputs.last_hidden_state.abs().max() == 0


def test_k_sample_log_likelihood_equals_k_separate_calls(tiny_vae, make_batch):
    batch = make_batch(tiny_vae.tokenizer)
    torch.manual_seed(0)
    z = torch.randn(3, 4, tiny_vae.config.latent_dim)  # [B,K,Z]
    with torch.no_grad():
        batched = tiny_vae.log_likelihood(z, batch["labels"])
        separate = torch.stack([tiny_vae.log_likelihood(z[:, k], batch["labels"]) for k in range(4)], dim=1)
        from_forward = -tiny_vae.sequence_nll(tiny_vae.decode_logits(z[:, 0], batch["labels"]), batch["labels"])
    assert batched.shape == (3, 4)
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(batched[:, 0], from_forward, rtol=1e-5, atol=1e-4)


def test_save_load_round_trip_is_identical(tiny_vae, tmp_path, make_batch, sentences):
    batch = make_batch(tiny_vae.tokenizer)
    saved = tiny_vae.save_pretrained(tmp_path / "vae")
    loaded = Seq2SeqVAE.from_pretrained(saved).eval()
    assert loaded.config == tiny_vae.config
    with torch.no_grad():
        expected = tiny_vae(**batch, sample=False)
        got = loaded(**batch, sample=False)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.mu, expected.mu, rtol=0, atol=0)
    # Only safetensors and JSON: nothing in the directory is a pickle.
    suffixes = {p.suffix for p in saved.rglob("*") if p.is_file()}
    assert not suffixes & {".bin", ".pt", ".pkl", ".pth"}, suffixes
    assert loaded.reconstruct(sentences[:1], max_new_tokens=8) == tiny_vae.reconstruct(sentences[:1], max_new_tokens=8)


def test_save_is_atomic(tiny_t5_dir, tmp_path, monkeypatch):
    """An interrupted save leaves neither a partial directory nor a clobbered old one."""
    vae = Seq2SeqVAE.from_pretrained(tiny_t5_dir)
    target = vae.save_pretrained(tmp_path / "vae")
    before = sorted(p.name for p in target.iterdir())

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("seq2vae.model.vae.save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        vae.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="vae_config.json"):
        Seq2SeqVAE.from_pretrained(tmp_path)


def test_from_backbone_loads_pretrained_weights_and_tokenizer_by_path(tiny_t5_dir, tmp_path):
    """`from_backbone(path)` is the real loading path: weights and tokenizer come from disk."""
    source = Seq2SeqVAE.from_pretrained(tiny_t5_dir)
    source.backbone.save_pretrained(tmp_path / "hf")
    source.tokenizer.save_pretrained(tmp_path / "hf")
    vae = Seq2SeqVAE.from_backbone(str(tmp_path / "hf"), latent_dim=8, pooling="max", injection="both")
    assert isinstance(vae.tokenizer, type(AutoTokenizer.from_pretrained(tmp_path / "hf")))
    for name, parameter in source.backbone.state_dict().items():
        torch.testing.assert_close(vae.backbone.state_dict()[name], parameter, rtol=0, atol=0)
    assert vae.config.latent_dim == 8 and vae.latent_to_embedding is not None


def test_model_dropout_overrides_every_dropout_of_the_backbone(tiny_t5_dir, tokenizer_dir, tmp_path):
    source = Seq2SeqVAE.from_pretrained(tiny_t5_dir)
    source.backbone.save_pretrained(tmp_path / "hf")
    source.tokenizer.save_pretrained(tmp_path / "hf")
    assert source.backbone.config.dropout_rate == 0.1
    pretrained = build_vae(VAEConfig(backbone=str(tmp_path / "hf"), dropout=0.0))
    assert pretrained.backbone.config.dropout_rate == 0.0
    assert all(m.p == 0.0 for m in pretrained.backbone.modules() if isinstance(m, torch.nn.Dropout))
    bart = build_vae(VAEConfig(backbone="debug-bart", tokenizer=str(tokenizer_dir), dropout=0.25)).backbone.config
    assert (bart.dropout, bart.attention_dropout, bart.activation_dropout) == (0.25, 0.25, 0.25)
    kept = build_vae(VAEConfig(backbone="debug-t5", tokenizer=str(tokenizer_dir))).backbone.config
    assert kept.dropout_rate == 0.1  # null keeps the backbone's own
    with pytest.raises(ConfigError, match="model.dropout"):
        VAEConfig(dropout=1.0)


def test_text_api(tiny_vae, sentences):
    torch.manual_seed(0)
    assert len(tiny_vae.reconstruct(sentences, max_new_tokens=6)) == 3
    samples = tiny_vae.sample(4, generator=torch.Generator().manual_seed(0), max_new_tokens=6)
    again = tiny_vae.sample(4, generator=torch.Generator().manual_seed(0), max_new_tokens=6)
    assert len(samples) == 4 and samples == again
    assert len(tiny_vae.sample(2, max_new_tokens=6, num_beams=3)) == 2
    path = tiny_vae.interpolate(sentences[0], sentences[1], steps=5, max_new_tokens=6)
    assert len(path) == 5
    # The end points of an interpolation are the reconstructions of the two sentences.
    assert path[0] == tiny_vae.reconstruct(sentences[:1], max_new_tokens=6)[0]
    assert path[-1] == tiny_vae.reconstruct(sentences[1:2], max_new_tokens=6)[0]


def test_parameter_groups_partition_the_parameters(tiny_vae):
    groups = tiny_vae.parameter_groups()
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(tiny_vae.parameters()))
    assert groups["embeddings"] == [tiny_vae.backbone.get_input_embeddings().weight]
    decoder_ids = {id(p) for p in groups["decoder"]}
    assert all(id(p) not in decoder_ids for p in tiny_vae.backbone.get_encoder().parameters())


def test_bf16_and_gradient_checkpointing(tokenizer_dir, make_batch):
    torch.manual_seed(0)
    config = VAEConfig(backbone="debug-t5", tokenizer=str(tokenizer_dir), latent_dim=16, gradient_checkpointing=True)
    vae = build_vae(config).to(torch.bfloat16).train()
    assert any(getattr(m, "gradient_checkpointing", False) for m in vae.backbone.modules())
    batch = make_batch(vae.tokenizer)
    out = vae(**batch)
    assert out.logits.dtype == torch.bfloat16 and out.recon_nll.dtype == torch.float32
    (out.recon_nll.mean() + out.kl.mean()).backward()
    assert vae.posterior.weight.grad is not None and torch.isfinite(vae.posterior.weight.grad).all()


def test_kl_helper_matches_closed_form():
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    expected = torch.tensor([[0.5, 0.5 * (2.718281828 - 2.0)]])
    torch.testing.assert_close(gaussian_kl_per_dim(mu, logvar), expected)


def test_model_package_does_not_import_deepspeed():
    code = "import sys, seq2vae.model; assert 'deepspeed' not in sys.modules, 'model imported deepspeed'"
    subprocess.run([sys.executable, "-c", code], check=True)
