"""Evaluation profiles against the references' own metric code.

profile_goldens.json holds what the references' functions returned on profile_fixtures.build(0)
(docs/CONVENTIONS.md, "How the profile goldens were made"); each profile must give the same numbers
from the same posteriors and log-likelihoods. The references compute in float32, hence rel 1e-5.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from seq2vae.evaluation.data import load_samples
from seq2vae.evaluation.harness import EvalConfig, evaluate
from seq2vae.evaluation.metrics import (
    iw_log_likelihood,
    log_normal,
    log_standard_normal,
)
from seq2vae.evaluation.profiles import PROFILE_NAMES, he2019_batches, profile_metrics
from seq2vae.model import Seq2SeqVAE

from . import profile_fixtures as fx

GOLDENS = json.loads((Path(__file__).parent / "profile_goldens.json").read_text())


@pytest.fixture(scope="module")
def stats():
    f = fx.build(0)
    z = f["z_samples"]
    return {
        "mu": f["mu"], "logvar": f["logvar"], "z0": f["z0"],
        "recon_nll": fx.recon_nll(f["logits"], f["labels"]).float(),
        "kl": 0.5 * (f["mu"].pow(2) + f["logvar"].exp() - 1 - f["logvar"]).sum(-1),
        "iw_log_px": iw_log_likelihood(
            f["log_px_z"].double(), log_standard_normal(z.double()),
            log_normal(z.double(), f["mu"].double()[:, None], f["logvar"].double()[:, None])
        ),
        "mean_log_px": f["log_px_z"].mean(1),
        "num_tokens": f["num_tokens"].float(),
        "words": f["words"].tolist(),
    }


@pytest.mark.parametrize("name", ["park2021", "optimus2020", "he2019"])
def test_profile_equals_the_reference_functions_on_the_same_inputs(stats, name):
    ours = profile_metrics(name, stats, stats["words"])
    golden = GOLDENS[name]["values"]
    for key, expected in golden.items():
        assert ours[key] == pytest.approx(expected, rel=1e-5, abs=1e-6), (name, key)


def test_profiles_differ_where_the_references_differ(stats):
    """The fixture tells the estimators apart, so agreeing with the goldens means something."""
    park = profile_metrics("park2021", stats)
    optimus = profile_metrics("optimus2020", stats)
    he = profile_metrics("he2019", stats, stats["words"])
    assert len({round(park["mi"], 3), round(optimus["mi"], 3), round(he["mi"], 3)}) == 3  # 256 / N / 32-by-length
    per_token = math.exp(float((stats["recon_nll"] + stats["kl"]).sum()) / float(stats["num_tokens"].sum()))
    assert park["ppl"] > per_token * 1.1  # without EOS in the denominator
    assert park["nll"] == pytest.approx(-park["elbo_as_printed"] + 2 * park["kl"])  # (KL - rec), as printed
    # A 0.01 threshold with var(mu) spread over 0.0004 .. 4: some dimensions are inactive.
    assert 0 < park["au"] < fx.LATENT_DIM


def test_park2021_mi_constant_cancels(stats):
    """metrics.py:174 sets the latent size to the batch size. The constant it scales, -0.5 c log 2pi,
    enters the negative entropy and every log-density of the mixture alike, so MI does not depend on
    it: not a defect (docs/CONVENTIONS.md)."""
    from seq2vae.evaluation.metrics import LOG_2PI
    from seq2vae.evaluation.profiles import entropy_mi_sum

    rows = slice(0, 256)
    mu, logvar, z = (stats[key][rows].double() for key in ("mu", "logvar", "z0"))

    def reference_form(c: float) -> float:  # metrics.py:175-185 with latent_dim = c
        neg_entropy = (-0.5 * c * LOG_2PI - 0.5 * (1 + logvar).sum(-1)).mean()
        log_density = (-0.5 * ((z[:, None] - mu[None]) ** 2 / logvar.exp()[None]).sum(-1)
                       - 0.5 * (c * LOG_2PI + logvar.sum(-1))[None])
        return float(neg_entropy - (torch.logsumexp(log_density, 1) - math.log(256)).mean())

    assert reference_form(256) == pytest.approx(reference_form(fx.LATENT_DIM), rel=1e-12)
    assert entropy_mi_sum(z, mu, logvar) / 256 == pytest.approx(reference_form(fx.LATENT_DIM), rel=1e-12)


def test_he2019_batches_are_equal_length_groups_of_at_most_32():
    words = [3, 5, 3, 3, 5] * 20 + [7]
    batches = he2019_batches(words)
    assert sum(len(b) for b in batches) == len(words)
    assert all(len({words[i] for i in b}) == 1 and len(b) <= 32 for b in batches)
    assert [len(b) for b in batches] == [32, 28, 32, 8, 1]


def test_unknown_profile_is_a_config_error():
    with pytest.raises(ValueError, match="eval.profile must be one of"):
        EvalConfig(profile="park")
    assert EvalConfig(profile="optimus2020").iw_samples == 100  # the reference's hard-coded K
    assert set(PROFILE_NAMES) == {"ours", "park2021", "optimus2020", "he2019"}


def test_evaluate_reports_the_profile_beside_our_metrics(tiny_t5_dir, eval_jsonl):
    vae = Seq2SeqVAE.from_pretrained(tiny_t5_dir)
    samples, _ = load_samples(eval_jsonl, vae.tokenizer)
    config = {"batch_size": 8, "max_reconstructions": 0, "num_prior_samples": 0, "num_interpolations": 0, "seed": 1}
    result = evaluate(vae, samples[:12], EvalConfig(iw_samples=4, profile="park2021", **config))
    ours, park = result["metrics"], result["profile"]
    assert park["name"] == "park2021"
    assert park["nll"] == pytest.approx(ours["neg_elbo"], rel=1e-9)  # their NLL is -ELBO
    tokens_without_eos = ours["num_tokens"] - ours["num_sentences"]
    assert park["ppl"] == pytest.approx(math.exp(ours["neg_elbo"] * ours["num_sentences"] / tokens_without_eos), rel=1e-9)
    assert park["ppl"] > ours["ppl_elbo_per_token"]
    # he2019 forces its K = 500: two sentences in one decoder call of 1000 sequences keep it quick.
    he_config = {**config, "batch_size": 2, "decoder_batch_size": 1000}
    he = evaluate(vae, samples[:2], EvalConfig(iw_samples=4, profile="he2019", **he_config))
    assert he["config"]["iw_samples"] == 500
    assert he["profile"]["iw_ppl"] == pytest.approx(he["metrics"]["ppl_iw_per_word"], rel=1e-9)
    assert evaluate(vae, samples[:4], EvalConfig(iw_samples=2, **config))["profile"] is None


def test_eval_cli_writes_and_prints_the_profile(tiny_t5_dir, eval_jsonl, tmp_path, capsys):
    from seq2vae.evaluation.cli import main as eval_main

    output = tmp_path / "eval.json"
    assert eval_main([
        "--model", str(tiny_t5_dir), "--data", str(eval_jsonl), "--profile", "park2021", "--iw-samples", "2",
        "--max-sentences", "6", "--max-reconstructions", "0", "--prior-samples", "0", "--interpolations", "0",
        "--device", "cpu", "--output", str(output),
    ]) == 0
    result = json.loads(output.read_text())
    assert result["profile"]["name"] == "park2021" and result["config"]["profile"] == "park2021"
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("park2021 ppl ")]
    assert len(printed) == 1 and printed[0].endswith(f"{result['profile']['ppl']:.3f}")
