"""Evaluation profiles: the same model's numbers in a reference paper's own units and estimators.

`seq2vae eval --profile park2021|optimus2020|he2019` adds a `profile` block to the result next to our
metrics (docs/CONVENTIONS.md, "Profiles"). Each profile reproduces what the reference's evaluation
script prints, computed from the per-sentence statistics the harness gathers anyway (posteriors, one
posterior sample z0, log-likelihoods), so no second model pass is needed. tests/evaluation/
test_profiles.py checks every number against the reference code's own functions run on the same
inputs (goldens in tests/evaluation/profile_goldens.json).

References (file:line at the commits named in the goldens file):
- park2021: seongminp/transformers-into-vaes `evaluate_all.py` (README: `-bs 256`, test file, file
  order) -> `metrics.py:151 calc_all`.
- optimus2020: ChunyuanLI/Optimus `code/examples/big_ae/run_lm_vae_training.py:485-487` ->
  `utils.py:1164 calc_mi`, `utils.py:1256 calc_au`, `utils.py:1058 calc_iwnll` (K = 100, line 1083).
- he2019: jxhe/vae-lagging-encoder `text.py:124 test`, `text.py:163 calc_iwnll`, `text.py:189
  calc_mi` (-> `modules/encoders/encoder.py:111 calc_mi`), `text.py:200 calc_au`; batches from
  `data/text_data.py:219 create_data_batch` (batch 32, grouped by length).
Shape legend: N sentences, Z latent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from .metrics import LOG_2PI, _log_density_matrix

ProfileName = Literal["ours", "park2021", "optimus2020", "he2019"]
PROFILE_NAMES = get_args(ProfileName)


@dataclass(frozen=True)
class Profile:
    name: str
    iw_samples: int | None  # the K the reference hard-codes; None: the profile needs no IW bound of its own
    source: str


PROFILES = {
    "ours": Profile("ours", None, "docs/CONVENTIONS.md"),
    "park2021": Profile("park2021", None, "seongminp/transformers-into-vaes evaluate_all.py -> metrics.py:151 calc_all"),
    "optimus2020": Profile("optimus2020", 100, "ChunyuanLI/Optimus big_ae/run_lm_vae_training.py:485-487 -> utils.py"),
    "he2019": Profile("he2019", 500, "jxhe/vae-lagging-encoder text.py:124 test, :163 calc_iwnll, :189 calc_mi, :200 calc_au"),
}

PARK2021_BATCH = 256  # README.md:29 `python evaluate_all.py -d snli -bs 256`
HE2019_BATCH = 32  # text.py:348 create_data_batch(batch_size=args.batch_size); config/config_yahoo.py:11 (and yelp) 32
AU_DELTA = 0.01  # all three: (au_var >= delta) with delta = 0.01


def entropy_mi_sum(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, mixture: slice | None = None) -> float:
    """Sum over the rows of He et al.'s MI terms: -H[q(z|x_i)] - log (1/M sum_j q(z_i|x_j)).

    The peers' estimator (vae-lagging-encoder encoder.py:111-145, copied by both other references):
    the analytic negative entropy -0.5 Z log 2pi - 0.5 sum(1 + logvar) instead of log q(z_i|x_i).
    Args: z, mu, logvar [N, Z] float64; the mixture is over all N rows. Returns the sum (divide by N).
    """
    neg_entropy = -0.5 * z.shape[1] * LOG_2PI - 0.5 * (1.0 + logvar).sum(-1)  # [N]
    log_qz = torch.logsumexp(_log_density_matrix(z, mu, logvar, 2**24), dim=1) - math.log(mu.shape[0])  # [N]
    return float((neg_entropy - log_qz).sum())


def _active_units(mu: torch.Tensor) -> int:
    """Dimensions with Var_x[mu_d] >= 0.01, N-1 denominator (all three references' evaluation code)."""
    return int((mu.double().var(dim=0, unbiased=True) >= AU_DELTA).sum())


def park2021(stats: dict[str, torch.Tensor]) -> dict:
    """What transformers-into-vaes' `evaluate_all.py -bs 256` prints (metrics.py:151-214 calc_all).

    - NLL = (sum KL + sum recon) / N = -ELBO (metrics.py:208), recon from the one z of the forward pass.
    - PPL = exp(sum(KL + recon) / (sum attention_mask - N)) (metrics.py:195, 212): the encoder's
      tokens minus one per sentence, i.e. tokens without EOS. For T5 the encoder input is the target,
      so that is our predicted tokens minus one per sentence.
    - ELBO as printed is (KL - recon) / N (metrics.py:210), neither the ELBO nor its negation.
    - MI over consecutive batches of 256 in file order, each batch its own mixture, z = the forward
      pass's z (metrics.py:173-186), weighted by batch size; `latent_dim = mu.shape[0]` (line 174)
      sets Z to the batch size, but that constant enters both terms and cancels (docs/CONVENTIONS.md).
    - AU with the N-1 denominator and >= 0.01 (metrics.py:201-205).
    """
    mu, logvar, z = (stats[key].double() for key in ("mu", "logvar", "z0"))
    recon, kl = stats["recon_nll"].double(), stats["kl"].double()
    num_sentences = mu.shape[0]
    mi_sum = sum(
        entropy_mi_sum(z[rows], mu[rows], logvar[rows])
        for rows in (slice(start, start + PARK2021_BATCH) for start in range(0, num_sentences, PARK2021_BATCH))
    )
    tokens_without_eos = float(stats["num_tokens"].double().sum()) - num_sentences
    total = float((recon + kl).sum())
    return {
        "ppl": math.exp(total / tokens_without_eos),
        "nll": total / num_sentences,
        "elbo_as_printed": float((kl - recon).sum()) / num_sentences,
        "rec": float(recon.sum()) / num_sentences,
        "kl": float(kl.sum()) / num_sentences,
        "mi": mi_sum / num_sentences,
        "au": _active_units(mu),
        "units": "nats per sentence; ppl per token without EOS, bound = -ELBO; MI over consecutive batches of 256",
    }


def optimus2020(stats: dict[str, torch.Tensor]) -> dict:
    """What Optimus' `evaluate` prints (run_lm_vae_training.py:485-490), at its evaluation batch of 1.

    - perplexity = exp(-sum IW log p(x) / sum gpt2_token_length) (utils.py:1079, 1100), K = 100
      (utils.py:1083); gpt2_token_length counts BOS + tokens + EOS (utils.py:448-449), one more than
      the decoder predicts: our predicted tokens + 1 per sentence.
    - elbo = (sum KL - sum mean_k log p(x|z_k)) / N (utils.py:1097; vae.py:283 averages the
      reconstruction over the K samples): -ELBO with a K-sample reconstruction term.
    - nll = -sum mean_k log p(x|z_k) / N (utils.py:1098): the reconstruction term, not an NLL.
    - mi: one mixture over the whole set, analytic entropy (utils.py:1164-1250).
    - au: N-1 denominator, >= 0.01 (utils.py:1256-1306).
    """
    mu, logvar, z = (stats[key].double() for key in ("mu", "logvar", "z0"))
    num_sentences = mu.shape[0]
    mean_log_px = stats["mean_log_px"].double()
    kl = stats["kl"].double()
    denominator = float(stats["num_tokens"].double().sum()) + num_sentences
    return {
        "perplexity": math.exp(-float(stats["iw_log_px"].double().sum()) / denominator),
        "elbo": float((kl - mean_log_px).sum()) / num_sentences,
        "nll": -float(mean_log_px.sum()) / num_sentences,
        "kl": float(kl.sum()) / num_sentences,
        "mi": entropy_mi_sum(z, mu, logvar) / num_sentences,
        "au": _active_units(mu),
        "iw_samples": PROFILES["optimus2020"].iw_samples,
        "units": "nats per sentence; perplexity from the IW bound (K=100) per token incl. an unpredicted BOS",
    }


def he2019_batches(words: Sequence[int], batch_size: int = HE2019_BATCH) -> list[np.ndarray]:
    """vae-lagging-encoder's evaluation batches (data/text_data.py:219-255): sentences sorted by length
    with numpy's default (unstable) argsort, each run of equal length cut into batches of `batch_size`."""
    lengths = np.asarray(words)
    order = np.argsort(lengths)
    sorted_lengths = lengths[order]
    change = [i for i in range(1, len(sorted_lengths)) if sorted_lengths[i] != sorted_lengths[i - 1]] + [len(lengths)]
    batches, current = [], 0
    for end in change:
        while current < end:
            stop = min(current + batch_size, end)
            batches.append(order[current:stop])
            current = stop
    return batches


def he2019(stats: dict[str, torch.Tensor], words: Sequence[int] | None) -> dict:
    """What vae-lagging-encoder's text.py prints for the test set (text.py:513-522).

    Its unit is the word: sent_len - 1 per sentence = words + EOS (text.py:132, 171). Without texts
    (words None) the profile falls back to predicted tokens, and says so in `units`.
    - iw_nll = -sum IW log p(x) / N, K = 500 (text.py:163-187, --iw_nsamples 500); iw_ppl from it.
    - nll = (sum recon + sum KL) / N = -ELBO, one z (text.py:150-154); ppl from it.
    - mi: each length-bucketed batch of 32 its own mixture, analytic entropy, weighted by batch size
      (text.py:189-198, encoder.py:111-145).
    - au: N-1 denominator, >= 0.01 (text.py:200-227).
    """
    mu, logvar, z = (stats[key].double() for key in ("mu", "logvar", "z0"))
    num_sentences = mu.shape[0]
    unit = "words + EOS"
    if words is None:
        words = [int(n) for n in stats["num_tokens"].tolist()]
        unit = "predicted tokens (texts unavailable)"
    recon, kl = stats["recon_nll"].double(), stats["kl"].double()
    iw_nll_sum = -float(stats["iw_log_px"].double().sum())
    num_units = float(sum(words))
    batches = he2019_batches(words)
    mi_sum = sum(entropy_mi_sum(z[rows], mu[rows], logvar[rows]) for rows in (torch.from_numpy(b) for b in batches))
    return {
        "iw_nll": iw_nll_sum / num_sentences,
        "iw_ppl": math.exp(iw_nll_sum / num_units),
        "nll": float((recon + kl).sum()) / num_sentences,
        "ppl": math.exp(float((recon + kl).sum()) / num_units),
        "kl": float(kl.sum()) / num_sentences,
        "mi": mi_sum / num_sentences,
        "au": _active_units(mu),
        "iw_samples": PROFILES["he2019"].iw_samples,
        "units": f"nats per sentence; perplexities per {unit}; MI over length-bucketed batches of 32",
    }


def profile_metrics(name: str, stats: dict[str, torch.Tensor], words: Sequence[int] | None = None) -> dict | None:
    """The reference `name`'s numbers from the harness's per-sentence `stats` (None for "ours").

    Args:
        stats: mu, logvar, z0 [N,Z]; recon_nll, kl, iw_log_px, mean_log_px, num_tokens [N], file order.
        words: whitespace words + EOS per sentence (he2019's unit), or None without texts.
    """
    if name not in PROFILES:
        raise ValueError(f"eval.profile must be one of {PROFILE_NAMES}, got {name!r}")
    if name == "ours":
        return None
    if name == "park2021":
        values = park2021(stats)
    elif name == "optimus2020":
        values = optimus2020(stats)
    else:
        values = he2019(stats, words)
    return {"name": name, "source": PROFILES[name].source, **values}
