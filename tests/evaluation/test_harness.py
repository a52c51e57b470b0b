"""The harness on the tiny saved models: batched IW pass against a per-sample loop, determinism,
collapse reporting, tiny and empty inputs, and the training-time `validate`."""

from __future__ import annotations

import math

import pytest
import torch

from seq2vae.data.collate import collate
from seq2vae.evaluation.data import load_samples
from seq2vae.evaluation.harness import EvalConfig, evaluate, posterior_pass, sentence_noise, validate
from seq2vae.evaluation.metrics import count_words, log_normal, log_standard_normal
from seq2vae.model import Seq2SeqVAE

SMALL = dict(
    iw_samples=6, batch_size=8, max_reconstructions=8, num_prior_samples=2, num_interpolations=1,
    interpolation_steps=3, max_new_tokens=8,
)
NO_GENERATION = {**SMALL, "max_reconstructions": 0, "num_prior_samples": 0, "num_interpolations": 0}


@pytest.fixture(scope="module")
def t5(tiny_t5_dir):
    return Seq2SeqVAE.from_pretrained(tiny_t5_dir)


@pytest.fixture(scope="module")
def t5_samples(t5, eval_jsonl):
    samples, info = load_samples(eval_jsonl, t5.tokenizer)
    assert info["kind"] == "jsonl" and info["skipped"] == {}
    return samples


@pytest.fixture(scope="module")
def t5_result(t5, t5_samples):
    return evaluate(t5, t5_samples, EvalConfig(**SMALL, seed=3))


def test_batched_iw_pass_matches_a_loop_over_samples(t5, t5_samples):
    """One [B,K,Z] decoder call (chunked over K) gives what K separate per-sample calls give."""
    t5.eval()  # no dropout, so the two paths are comparable
    batch = collate(t5_samples[:3], t5.tokenizer.pad_token_id)
    noise = torch.stack([sentence_noise(0, i, 5, t5.config.latent_dim) for i in range(3)])  # [B,K,Z]
    with torch.no_grad():
        result = posterior_pass(t5, batch, noise, samples_per_call=2)  # chunks of 2, 2, 1 samples
        mu, logvar = t5.encode(batch["input_ids"], batch["attention_mask"])
        log_px_z, log_weights = [], []
        for k in range(5):
            z = mu + torch.exp(0.5 * logvar) * noise[:, k]  # [B,Z]
            log_px_z.append(t5.log_likelihood(z, batch["labels"]))  # [B]: one sample per decoder call
            log_weights.append(log_px_z[-1] + log_standard_normal(z) - log_normal(z, mu, logvar))
        expected = torch.logsumexp(torch.stack(log_weights, 1), 1) - math.log(5)
    torch.testing.assert_close(result["iw_log_px"], expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(result["recon_nll"], -log_px_z[0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(result["mu"], mu)


def test_evaluate_reports_consistent_metrics_with_counts(t5_result, t5_samples):
    metrics = t5_result["metrics"]
    assert metrics["num_sentences"] == len(t5_samples) == 20
    assert metrics["num_tokens"] == sum(len(s["input_ids"]) for s in t5_samples)
    assert metrics["num_words"] == sum(count_words(s["text"]) for s in t5_samples)
    assert metrics["neg_elbo"] == pytest.approx(metrics["recon_nll"] + metrics["kl"])
    assert metrics["ppl_iw_per_token"] == pytest.approx(math.exp(metrics["iw_nll"] * 20 / metrics["num_tokens"]), rel=1e-9)
    assert metrics["kl"] > 0 and 0 <= metrics["mi_dataset"] <= math.log(20)
    assert metrics["mi_dataset_components"] == 20 and metrics["mi_mini_batch_aggregate"] == "mini-batch by length"
    assert 1 <= metrics["mi_mini_batch_size"] < 20  # the largest group of equal-length sentences
    assert metrics["num_truncated"] == 0
    assert 0 <= metrics["active_units"] <= 16 and len(metrics["mu_variance"]) == 16
    reconstruction = t5_result["reconstruction"]
    assert reconstruction["num_sentences"] == 8 and 0 <= reconstruction["token_accuracy"] <= 1
    assert len(t5_result["prior_samples"]) == 2 and len(t5_result["interpolations"][0]["steps"]) == 3
    # The JSONL's factors are probed; the probe reports its majority baseline beside it.
    assert set(t5_result["probes"]["factors"]) == {"topic", "sentiment", "tense", "length"}
    for probe in t5_result["probes"]["factors"].values():
        assert probe["num_train"] + probe["num_test"] == 20 and 0 <= probe["majority_baseline"] <= 1


def test_per_word_perplexity_counts_the_words_that_were_scored(t5, eval_jsonl):
    samples, info = load_samples(eval_jsonl, t5.tokenizer, max_length=8)
    assert info["truncated"] > 0
    metrics = evaluate(t5, samples, EvalConfig(**NO_GENERATION))["metrics"]
    assert metrics["num_truncated"] == info["truncated"]
    expected_words = sum(
        count_words(t5.tokenizer.decode(list(s["input_ids"]), skip_special_tokens=True)) if len(s["input_ids"]) == 8
        and len(t5.tokenizer(s["text"])["input_ids"]) > 8 else count_words(s["text"])
        for s in samples
    )
    assert metrics["num_words"] == expected_words < sum(count_words(s["text"]) for s in samples)
    assert metrics["ppl_iw_per_word"] == pytest.approx(math.exp(metrics["iw_nll"] * 20 / expected_words), rel=1e-9)


def test_evaluate_is_deterministic_given_the_seed(t5, t5_samples, t5_result):
    again = evaluate(t5, t5_samples, EvalConfig(**SMALL, seed=3))
    assert again == t5_result  # metrics, reconstructions, probes, samples, interpolations
    seed_3 = evaluate(t5, t5_samples[:10], EvalConfig(**NO_GENERATION, seed=3))["metrics"]
    seed_4 = evaluate(t5, t5_samples[:10], EvalConfig(**NO_GENERATION, seed=4))["metrics"]
    assert seed_4["recon_nll"] != pytest.approx(seed_3["recon_nll"])
    assert seed_4["kl"] == seed_3["kl"]  # mu and logvar do not depend on the seed


def test_collapsed_model_reports_zero_kl_au_mi_and_says_so(collapsed_t5_dir, eval_jsonl):
    vae = Seq2SeqVAE.from_pretrained(collapsed_t5_dir)
    samples, _ = load_samples(eval_jsonl, vae.tokenizer, max_sentences=12)
    result = evaluate(vae, samples, EvalConfig(**NO_GENERATION))
    metrics = result["metrics"]
    assert metrics["kl"] == 0.0 and metrics["active_units"] == 0
    assert metrics["mi_dataset"] == pytest.approx(0.0, abs=1e-9) and metrics["mi_mini_batch"] == pytest.approx(0.0, abs=1e-9)
    assert any("posterior collapse" in note and "0 of 16 active units" in note for note in result["notes"])


def test_single_sentence_and_empty_input_give_clear_messages(t5, t5_samples):
    result = evaluate(t5, t5_samples[:1], EvalConfig(**SMALL))
    assert result["metrics"]["active_units"] is None and result["metrics"]["num_sentences"] == 1
    assert any("at least 2 sentences" in note for note in result["notes"])
    assert result["probes"]["factors"] == {}
    with pytest.raises(ValueError, match="no sentences to evaluate"):
        evaluate(t5, [], EvalConfig(**SMALL))


def test_bart_runs_through_the_harness(tiny_bart_dir, eval_jsonl):
    vae = Seq2SeqVAE.from_pretrained(tiny_bart_dir)
    samples, _ = load_samples(eval_jsonl, vae.tokenizer, max_sentences=6)
    result = evaluate(vae, samples, EvalConfig(**{**NO_GENERATION, "max_reconstructions": None}))
    assert result["metrics"]["num_tokens"] == sum(len(s["input_ids"]) for s in samples)
    assert math.isfinite(result["metrics"]["iw_nll"]) and result["reconstruction"]["num_sentences"] == 6


def test_validate_is_cheap_respects_max_batches_and_restores_training_mode(t5, t5_samples):
    batches = [collate(t5_samples[i : i + 4], t5.tokenizer.pad_token_id) for i in range(0, 20, 4)]
    t5.train()
    result = validate(t5, iter(batches), num_samples=3, max_batches=2, num_reconstructions=2)
    assert t5.training
    t5.eval()
    assert result["num_sentences"] == 8 and result["iw_samples"] == 3
    assert result["num_tokens"] == int(sum((b["labels"] != -100).sum() for b in batches[:2]))
    assert result["neg_elbo"] == pytest.approx(result["recon_nll"] + result["kl"])
    assert {"mi_dataset", "mi_mini_batch", "active_units", "ppl_iw_per_token"} <= set(result)
    assert len(result["reconstructions"]) == 2 and result["reconstructions"][0]["input"] == t5_samples[0]["text"]
