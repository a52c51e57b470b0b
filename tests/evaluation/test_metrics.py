"""Each metric against an independent computation on inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from seq2vae.evaluation.metrics import (
    active_units,
    count_predicted_tokens,
    count_words,
    gaussian_kl,
    iw_log_likelihood,
    length_buckets,
    log_normal,
    log_standard_normal,
    mutual_information,
    perplexity,
)
from seq2vae.evaluation.probe import discrete_factors, encode_labels, linear_probe
from seq2vae.evaluation.reconstruction import corpus_bleu, exact_match, token_accuracy


def test_densities_match_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    z, mu, logvar = (torch.randn(5, 3, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal(z, mu, logvar), expected)
    torch.testing.assert_close(log_standard_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_gaussian_kl_matches_torch_kl_divergence():
    generator = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    posterior = Normal(mu, torch.exp(0.5 * logvar))
    expected = torch.distributions.kl_divergence(posterior, Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert torch.all(gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)) == 0)


def test_active_units_counts_dimensions_above_delta_with_unbiased_variance():
    generator = torch.Generator().manual_seed(2)
    mu = torch.randn(200, 3, generator=generator) * torch.tensor([1.0, 0.05, 0.2])  # var ~1, ~0.0025, ~0.04
    result = active_units(mu, delta=0.01)
    torch.testing.assert_close(result.variance, torch.tensor([torch.var(mu[:, d]).item() for d in range(3)]))
    assert result.count == 2
    two = torch.tensor([[0.0], [1.0]])
    assert active_units(two).variance.item() == pytest.approx(0.5)  # N-1 denominator, not N (0.25)


def test_identical_posteriors_have_no_active_units_and_zero_mi():
    mu = torch.full((50, 8), 0.3)
    logvar = torch.full((50, 8), -1.0)
    assert active_units(mu).count == 0
    mi = mutual_information(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert mi.nats == pytest.approx(0.0, abs=1e-9)
    assert mi.aggregate == "dataset" and mi.num_components == 50


def test_mi_of_separated_posteriors_reaches_log_n_and_mini_batch_caps_at_log_m():
    num_sentences = 64
    mu = torch.arange(num_sentences, dtype=torch.float64)[:, None] * 100.0 * torch.ones(1, 2)
    logvar = torch.zeros(num_sentences, 2)
    generator = torch.Generator().manual_seed(0)
    dataset = mutual_information(mu, logvar, generator=generator)
    assert dataset.nats == pytest.approx(math.log(num_sentences), abs=1e-6)
    mini = mutual_information(mu, logvar, mini_batch_size=16, generator=generator)
    assert mini.nats == pytest.approx(math.log(16), abs=1e-6)
    assert (mini.aggregate, mini.num_components) == ("mini-batch", 16)


def test_mi_of_two_clusters_is_log_two():
    mu = torch.cat([torch.full((40, 3), 20.0), torch.full((40, 3), -20.0)])
    mi = mutual_information(mu, torch.zeros(80, 3), generator=torch.Generator().manual_seed(0))
    assert mi.nats == pytest.approx(math.log(2), abs=1e-6)


def test_mi_matches_brute_force_mixture_and_is_chunk_invariant():
    generator = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(30, 4, generator=generator), torch.randn(30, 4, generator=generator) * 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn(30, 4, generator=generator)
    components = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    expected = 0.0
    for i in range(30):
        log_q_all = components.log_prob(z[i].double()).sum(-1)  # [M]
        expected += (log_q_all[i] - (torch.logsumexp(log_q_all, 0) - math.log(30))).item()
    expected /= 30
    assert mutual_information(mu, logvar, z).nats == pytest.approx(expected, abs=1e-9)
    assert mutual_information(mu, logvar, z, chunk_elements=7).nats == pytest.approx(expected, abs=1e-9)


def direct_mi(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> float:
    """The peers' computation: squared differences formed directly, never expanded."""
    log_q_all = -0.5 * (((z[:, None] - mu[None]) ** 2 * torch.exp(-logvar)[None]).sum(-1) + logvar.sum(-1)
                        + mu.shape[1] * math.log(2 * math.pi))
    log_q_own = log_normal(z, mu, logvar)
    return float((log_q_own - (torch.logsumexp(log_q_all, 1) - math.log(mu.shape[0]))).mean())


@pytest.mark.parametrize("logvar_value", [-30.0, -40.0])
def test_mi_of_sharp_posteriors_matches_the_direct_computation(logvar_value):
    # Autoencoder phases leave |mu| ~ 10 with logvar far below -20: the matmul expansion of
    # (z - mu)^2 / var cancels catastrophically there (errors of nats before the fix).
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(32, 8, generator=generator, dtype=torch.float64) * 10
    mu = torch.cat([base, base])  # each posterior has a twin: MI = log N - log 2 exactly
    mu[32:, 0] += 1e-9  # twins overlap without coinciding, so the mixture terms are not trivial
    logvar = torch.full_like(mu, logvar_value)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, dtype=torch.float64)
    expected = direct_mi(mu, logvar, z)
    assert mutual_information(mu, logvar, z).nats == pytest.approx(expected, abs=1e-6)
    assert mutual_information(mu, logvar, z, chunk_elements=100).nats == pytest.approx(expected, abs=1e-6)
    assert mutual_information(mu, logvar, z).nats <= math.log(64) + 1e-9


def test_length_buckets_are_equal_length_batches_with_short_remainders():
    lengths = torch.tensor([5, 3, 5, 3, 5, 7, 5, 3])
    batches = [rows.tolist() for rows in length_buckets(lengths, 2)]
    assert batches == [[1, 3], [7], [0, 2], [4, 6], [5]]


def test_mini_batch_mi_by_length_uses_the_buckets_and_says_so():
    generator = torch.Generator().manual_seed(6)
    mu, logvar = torch.randn(40, 3, generator=generator), torch.zeros(40, 3)
    z = mu + torch.randn(40, 3, generator=generator)
    lengths = torch.randint(3, 6, (40,), generator=generator)
    expected = 0.0
    for rows in length_buckets(lengths, 8):
        expected += direct_mi(mu[rows].double(), logvar[rows].double(), z[rows].double()) * len(rows)
    result = mutual_information(mu, logvar, z, mini_batch_size=8, lengths=lengths)
    assert result.nats == pytest.approx(expected / 40, abs=1e-9)
    assert result.aggregate == "mini-batch by length"
    assert result.num_components == max(len(rows) for rows in length_buckets(lengths, 8))
    consecutive = mutual_information(mu, logvar, z, mini_batch_size=8)
    assert consecutive.aggregate == "mini-batch" and consecutive.nats != pytest.approx(result.nats, abs=1e-6)


def linear_gaussian(num_sentences: int, data_dim: int = 3, latent_dim: int = 2, noise_var: float = 0.5):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s I): exact log p(x) and the exact posterior are known."""
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(data_dim, latent_dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(data_dim, generator=generator, dtype=torch.float64)
    marginal = MultivariateNormal(bias, weight @ weight.T + noise_var * torch.eye(data_dim, dtype=torch.float64))
    x = marginal.sample((num_sentences,))
    posterior_cov = torch.linalg.inv(torch.eye(latent_dim, dtype=torch.float64) + weight.T @ weight / noise_var)
    posterior_mu = (x - bias) @ weight @ posterior_cov / noise_var  # [N, Z]
    return weight, bias, noise_var, x, marginal.log_prob(x), posterior_mu, posterior_cov


def iw_bound(x, weight, bias, noise_var, mu, logvar, num_samples, generator):
    """IW bound and per-sentence mean log weight (the ELBO estimate) from the same K samples."""
    z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * torch.randn(
        mu.shape[0], num_samples, mu.shape[1], generator=generator, dtype=torch.float64
    )  # [N, K, Z]
    log_px_z = log_normal(x[:, None], z @ weight.T + bias, torch.full_like(x, math.log(noise_var))[:, None])
    log_pz, log_qz_x = log_standard_normal(z), log_normal(z, mu[:, None], logvar[:, None])
    return iw_log_likelihood(log_px_z, log_pz, log_qz_x), (log_px_z + log_pz - log_qz_x).mean(1)


def test_iw_bound_is_exact_with_the_true_posterior():
    weight, bias, noise_var, x, log_px, posterior_mu, posterior_cov = linear_gaussian(20, latent_dim=1)
    logvar = torch.log(posterior_cov.diagonal()).expand(20, 1)
    bound, _ = iw_bound(x, weight, bias, noise_var, posterior_mu, logvar, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(bound, log_px)  # constant importance weights: every K is exact


def test_iw_bound_approaches_exact_log_likelihood_and_beats_elbo():
    weight, bias, noise_var, x, log_px, posterior_mu, posterior_cov = linear_gaussian(200)
    # A mean-field q that is too wide and shifted: the ELBO is clearly loose.
    mu = posterior_mu + 0.3
    logvar = torch.log(2.0 * posterior_cov.diagonal()).expand_as(mu)
    generator = torch.Generator().manual_seed(0)
    exact = log_px.mean().item()
    gaps = []
    for num_samples in (1, 10, 100, 2000):
        bound, mean_log_weight = iw_bound(x, weight, bias, noise_var, mu, logvar, num_samples, generator)
        assert torch.all(bound >= mean_log_weight - 1e-12)  # log-mean-exp >= mean, sample by sample
        gaps.append(exact - bound.mean().item())
    assert all(gap > -0.02 for gap in gaps)  # a lower bound, up to Monte Carlo noise
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[0] > 0.2 and abs(gaps[3]) < 0.02
    # And against the analytic ELBO (independent of sampling): E[log p(x|z)] + E[log p(z)] + H[q].
    var = torch.exp(logvar)
    residual = x - mu @ weight.T - bias
    expected_log_px_z = -0.5 * (
        x.shape[1] * math.log(2 * math.pi * noise_var)
        + (residual.pow(2).sum(-1) + (var[:, None, :] * weight.pow(2)).sum((-1, -2))) / noise_var
    )
    elbo = expected_log_px_z - gaussian_kl(mu, logvar)
    assert bound.mean().item() > elbo.mean().item() + 0.1
    _, mean_log_weight = iw_bound(x, weight, bias, noise_var, mu, logvar, 4000, generator)
    assert mean_log_weight.mean().item() == pytest.approx(elbo.mean().item(), abs=0.02)


def test_iw_log_likelihood_is_log_mean_exp():
    log_px_z = torch.tensor([[-1.0, -2.0, -3.0]])
    expected = math.log((math.exp(-1) + math.exp(-2) + math.exp(-3)) / 3)
    assert iw_log_likelihood(log_px_z, torch.zeros(1, 3), torch.zeros(1, 3)).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        iw_log_likelihood(torch.zeros(3), torch.zeros(3), torch.zeros(3))


def test_perplexity_and_counts():
    assert perplexity(10 * math.log(7.0), 10) == pytest.approx(7.0)
    assert math.isnan(perplexity(1.0, 0))
    labels = torch.tensor([[5, 6, 1, -100], [7, 1, -100, -100]])
    assert count_predicted_tokens(labels).tolist() == [3, 2]
    assert count_words("the  cat sat") == 4  # three words plus EOS


def test_active_units_refuses_a_single_sentence_with_a_clear_message():
    with pytest.raises(ValueError, match="at least 2 sentences"):
        active_units(torch.zeros(1, 4))


def test_bleu_exact_match_and_token_accuracy_on_hand_computed_cases():
    reference = "the cat sat on the mat".split()
    assert corpus_bleu([reference], [reference]) == pytest.approx(100.0)
    assert corpus_bleu([["a", "b"]], [reference]) == 0.0
    # Hand computation: hyp "the cat sat on the" vs the reference: precisions 5/5, 4/4, 3/3, 2/2,
    # brevity penalty exp(1 - 6/5).
    assert corpus_bleu([reference[:5]], [reference]) == pytest.approx(100.0 * math.exp(1 - 6 / 5))
    # One substitution in a 6-gram: p1 5/6, p2 3/5, p3 1/4, p4 0/3 -> 0; with max_order 3: geometric mean.
    hyp = "the cat sat in the mat".split()
    assert corpus_bleu([hyp], [reference], max_order=3) == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))
    assert token_accuracy([[1, 2, 3], [4]], [[1, 9, 3], [4, 5]]) == (3, 5)
    assert exact_match([[1, 2], [3]], [[1, 2], [3, 4]]) == 1


def test_linear_probe_learns_a_linear_factor_and_reports_the_baseline():
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (300,), generator=generator)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    informative = centres[labels] + torch.randn(300, 2, generator=generator)
    features = torch.cat([informative, torch.randn(300, 3, generator=generator)], 1)  # plus 3 noise dimensions
    result = linear_probe(features, labels, seed=0)
    assert result.accuracy > 0.95
    assert 0.2 < result.majority_baseline < 0.5
    assert (result.num_train, result.num_test, result.num_classes) == (240, 60, 3)
    noise = linear_probe(torch.randn(300, 5, generator=generator), labels, seed=0)
    assert noise.accuracy < 0.6  # nothing to learn: near chance


def test_discrete_factors_keeps_discrete_fields_and_says_why_others_are_skipped():
    metadata = [{"tense": t, "length": float(i), "id": f"s{i}"} for i, t in enumerate(["past", "present"] * 40)]
    factors, skipped = discrete_factors(metadata)
    assert list(factors) == ["tense"]
    assert "not str/int/bool" in skipped["length"] and "80 distinct" in skipped["id"]
    labels, classes = encode_labels(factors["tense"])
    assert classes == ["past", "present"] and labels[:2].tolist() == [0, 1]
