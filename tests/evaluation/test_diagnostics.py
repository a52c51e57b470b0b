"""Decoder-side diagnostics on fixtures whose answer is known: a decoder that ignores z, a posterior
equal to the prior, a saturated MI, the grammar's verdict on generated and corrupted samples."""

from __future__ import annotations

import math

import pytest
import torch

from seq2vae.data.collate import collate
from seq2vae.data.synthetic import generate_corpus, parse_sentence, sentence_entropy
from seq2vae.evaluation.data import load_samples
from seq2vae.evaluation.diagnostics import (
    decoder_reliance,
    free_bits_occupancy,
    gaussian_prior_kl,
    ground_truth_gaps,
    moment_matched_gaussian,
    posterior_diagnostics,
    rate_split,
    synthetic_log_probs,
    text_quality,
)
from seq2vae.evaluation.harness import (
    EvalConfig,
    evaluate,
    posterior_pass,
    sentence_noise,
)
from seq2vae.evaluation.metrics import gaussian_kl, mutual_information
from seq2vae.evaluation.prior_fit import fit_learned_prior
from seq2vae.model import Seq2SeqVAE


@pytest.fixture(scope="module")
def t5(tiny_t5_dir):
    return Seq2SeqVAE.from_pretrained(tiny_t5_dir).eval()


@pytest.fixture(scope="module")
def t5_samples(t5, eval_jsonl):
    return load_samples(eval_jsonl, t5.tokenizer)[0]


def _reliance(vae, samples) -> dict:
    batch = collate(samples[:6], vae.tokenizer.pad_token_id)
    noise = torch.stack([sentence_noise(0, i, 2, vae.config.latent_dim) for i in range(6)])
    prior_z = torch.cat([sentence_noise(0, i, 1, vae.config.latent_dim, stream=1) for i in range(6)])
    with torch.no_grad():
        stats = posterior_pass(vae, batch, noise, 2, prior_z)
    return decoder_reliance(stats["recon_nll"], stats["recon_nll_other_z"], stats["recon_nll_prior_z"])


def test_a_decoder_that_ignores_z_gains_nothing_from_its_own_z(t5, t5_samples, tiny_t5_dir):
    blind = Seq2SeqVAE.from_pretrained(tiny_t5_dir).eval()
    with torch.no_grad():  # the memory states no longer depend on z
        blind.latent_to_memory.weight.zero_()
    result = _reliance(blind, t5_samples)
    assert result["reliance_gain_vs_other_z"] == pytest.approx(0.0, abs=1e-4)
    assert result["reliance_gain_vs_prior_z"] == pytest.approx(0.0, abs=1e-4)
    # The same untrained model with its z path intact: another sentence's z changes the likelihood.
    reading = _reliance(t5, t5_samples)
    assert abs(reading["recon_nll_other_z"] - reading["recon_nll_own_z"]) > 1e-3


def test_reliance_gain_is_the_mean_nll_difference_and_skips_unpaired_sentences():
    own = torch.tensor([10.0, 12.0, 8.0])
    other = torch.tensor([15.0, float("nan"), 11.0])
    prior = torch.tensor([20.0, 22.0, 18.0])
    result = decoder_reliance(own, other, prior)
    assert result["reliance_gain_vs_other_z"] == pytest.approx(4.0)
    assert result["reliance_gain_vs_prior_z"] == pytest.approx(10.0)
    assert result["recon_nll_other_z"] == pytest.approx(13.0)


def test_posterior_equal_to_the_prior_has_no_mismatch_and_no_information():
    mu, logvar = torch.zeros(500, 8), torch.zeros(500, 8)
    mi = mutual_information(mu, logvar, generator=torch.Generator().manual_seed(0))
    split = rate_split(gaussian_kl(mu, logvar), mu, logvar, mi.nats, mi.num_components)
    assert split["prior_mismatch_gaussian"] == pytest.approx(0.0, abs=1e-9)
    assert split["mi_upper_bound"] == pytest.approx(0.0, abs=1e-9)
    assert mi.nats == pytest.approx(0.0, abs=1e-9) and not split["mi_saturated"]


def test_identical_shifted_posteriors_are_pure_mismatch():
    # Every sentence has the same posterior N(m, s^2): I(x;z) = 0, so all of the KL is mismatch.
    mu = torch.full((300, 4), 1.5)
    logvar = torch.full((300, 4), math.log(0.25))
    kl = gaussian_kl(mu, logvar)
    split = rate_split(kl, mu, logvar, 0.0, 300)
    assert split["prior_mismatch_gaussian"] == pytest.approx(float(kl.mean()), rel=1e-6)  # kl in float32
    assert split["mi_upper_bound"] == pytest.approx(0.0, abs=1e-5)


def test_the_gaussian_bound_is_below_the_mixture_mismatch_and_the_identity_holds():
    generator = torch.Generator().manual_seed(1)
    mu = torch.randn(200, 3, generator=generator) * 2.0 + 1.0
    logvar = torch.full((200, 3), math.log(0.5))
    kl = gaussian_kl(mu, logvar)
    mean, covariance = moment_matched_gaussian(mu, logvar)
    assert torch.allclose(mean, mu.double().mean(0))
    assert torch.allclose(covariance.diagonal(), mu.double().var(0, unbiased=False) + 0.5)
    # mismatch(Gaussian) <= KL(q(z) || p) = mean KL - I, with I from a many-sample mixture estimate.
    z = torch.cat([mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator) for _ in range(10)])
    mi = mutual_information(mu.repeat(10, 1), logvar.repeat(10, 1), z).nats
    split = rate_split(kl, mu, logvar, mi, 200)
    assert split["prior_mismatch_gaussian"] <= split["prior_mismatch_mixture"] + 0.05
    assert gaussian_prior_kl(torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)) == pytest.approx(0.0)


def test_saturated_mi_is_flagged_and_a_measured_one_is_not():
    # Sharp, well-separated posteriors: the mixture estimate reaches log N whatever the truth.
    generator = torch.Generator().manual_seed(0)
    sharp_mu = torch.randn(200, 16, generator=generator) * 3.0
    sharp_logvar = torch.full((200, 16), -8.0)
    stats = {"mu": sharp_mu, "logvar": sharp_logvar, "kl": gaussian_kl(sharp_mu, sharp_logvar)}
    mi = mutual_information(sharp_mu, sharp_logvar, generator=generator)
    assert mi.nats == pytest.approx(math.log(200), abs=1e-3)
    metrics, notes = posterior_diagnostics(stats, mi.nats, mi.num_components, free_bits=None)
    assert metrics["mi_saturated"] and "ceiling" in notes[0]
    assert metrics["mi_upper_bound"] > math.log(200)  # the bound says there is more than the estimate can show
    # Broad, overlapping posteriors: MI far below log N.
    broad_mu = torch.randn(200, 2, generator=generator) * 0.3
    broad_logvar = torch.zeros(200, 2)
    mi = mutual_information(broad_mu, broad_logvar, generator=generator)
    assert not rate_split(gaussian_kl(broad_mu, broad_logvar), broad_mu, broad_logvar, mi.nats, 200)["mi_saturated"]


def test_free_bits_occupancy_counts_terms_below_the_threshold():
    kl_per_dim = torch.tensor([[0.2, 1.5, 0.9], [0.1, 2.0, 1.1]])
    result = free_bits_occupancy(kl_per_dim, 1.0)
    assert result["free_bits_share_below"] == pytest.approx(3 / 6)
    assert result["free_bits_dims_below"] == 1  # dimension 0 (mean 0.15); dimension 2's mean is 1.0


def test_text_quality_accepts_generated_and_rejects_corrupted_sentences():
    texts = [e["text"] for e in generate_corpus(200, seed=5)]
    good = text_quality(texts, parse_sentence)
    assert good["grammatical"] == 1.0 and good["well_formed"] == 1.0 and good["distinct"] > 0.95
    assert good["factor_combinations"] > 50
    corrupted = [" ".join(reversed(t[:-1].split())) + "." for t in texts]
    assert text_quality(corrupted, parse_sentence)["grammatical"] == 0.0
    repeated = text_quality([texts[0]] * 10, parse_sentence)
    assert repeated["grammatical"] == 1.0 and repeated["distinct"] == 0.1 and repeated["factor_combinations"] == 1
    # Decoded text may carry stray whitespace; the checker reads it normalised.
    assert text_quality(["  " + texts[0].replace(" ", "  ")], parse_sentence)["grammatical"] == 1.0


def test_synthetic_log_probs_only_for_the_synthetic_corpus():
    texts = [e["text"] for e in generate_corpus(30, seed=2)]
    log_probs = synthetic_log_probs(texts)
    assert log_probs is not None and log_probs.shape == (30,) and bool((log_probs < 0).all())
    assert synthetic_log_probs(["The quick brown fox jumps over the lazy dog."] + texts) is None
    assert synthetic_log_probs(texts + ["not a corpus sentence"]) is None


def test_gaps_to_the_true_nll_and_the_entropy_ceiling():
    true_log_prob = torch.tensor([-30.0, -34.0])
    gaps = ground_truth_gaps(torch.tensor([40.0, 44.0]), torch.tensor([35.0, 37.0]), true_log_prob, 50.0, 20.0, 32.0)
    assert gaps["true_nll"] == pytest.approx(32.0)
    assert gaps["neg_elbo_gap_to_true_nll"] == pytest.approx(10.0)
    assert gaps["iw_nll_gap_to_true_nll"] == pytest.approx(4.0)
    assert gaps["kl_excess_over_entropy"] == pytest.approx(18.0)
    assert gaps["mi_upper_bound_share_of_entropy"] == pytest.approx(20.0 / 32.0)


def test_evaluate_reports_the_diagnostics_and_both_priors_side_by_side(t5, t5_samples):
    prior = fit_learned_prior(t5, t5_samples, num_components=2, temperature=0.5)
    assert prior.record["num_sentences"] == 20 and prior.temperature == 0.5
    config = EvalConfig(iw_samples=3, batch_size=8, max_reconstructions=0, num_prior_samples=3, num_interpolations=1,
                        interpolation_steps=3, max_new_tokens=8, free_bits=0.5)
    result = evaluate(t5, t5_samples, config, learned_priors=[prior])
    metrics = result["metrics"]
    assert set(result["samples_by_prior"]) == {"standard_normal", "gmm"}
    assert result["prior_samples"] == result["samples_by_prior"]["standard_normal"]
    for key in ("reliance_gain_vs_other_z", "reliance_gain_vs_prior_z", "prior_mismatch_gaussian", "mi_upper_bound",
                "mi_saturated", "free_bits_share_below", "prior_gmm_distinct", "true_nll", "iw_nll_gap_to_true_nll",
                "prior_gmm_grammatical", "prior_standard_normal_grammatical", "interpolation_grammatical"):
        assert key in metrics, key
    assert metrics["data_entropy"] == pytest.approx(sentence_entropy())
    # An untrained model: decoded samples are not sentences, and its NLL is far above the truth.
    assert metrics["prior_standard_normal_grammatical"] == 0.0
    assert metrics["iw_nll_gap_to_true_nll"] > 10.0
    assert metrics["true_nll"] == pytest.approx(-sum(parse_sentence(s["text"]).log_prob for s in t5_samples) / 20)
