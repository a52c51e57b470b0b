"""The evaluation driver: feeds a Seq2SeqVAE batches and computes every metric of `seq2vae.evaluation`.

`evaluate(vae, samples, config)` is the full harness (`seq2vae eval`): deterministic given the seed
and independent of the number of ranks, because batch b always holds sentences [b*B, (b+1)*B)
(whatever rank runs it) and sentence i's random draws come from a generator seeded with (seed, i).
Statistics that need the whole set (variance of mu for AU, the aggregate posterior for MI, the
corpus sums behind perplexity and BLEU) are computed after gathering every sentence's results, in
global sentence order, on every rank.

`validate(model, batches, ...)` is the cheap variant training's periodic validation calls on its own
per-rank batch iterator.

Both run the same number of encoder, decoder and generation calls on every rank (dummy work where a
rank has no data), so they are safe under ZeRO-3. Neither imports DeepSpeed.
Shape legend: B batch, T target length, Z latent, K importance samples, N sentences.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from tqdm import tqdm

from ..config import ConfigError, doc
from ..data.collate import collate
from ..distributed import (
    all_ranks,
    any_rank,
    collective_device,
    gather_objects,
    max_over_ranks,
    rank_and_world,
    resident_under_zero3,
)
from ..model.prior import StandardNormalPrior
from .diagnostics import posterior_diagnostics, synthetic_diagnostics, synthetic_log_probs
from .latents import latent_sample
from .metrics import (
    active_units,
    count_predicted_tokens,
    count_words,
    gaussian_kl,
    gaussian_kl_per_dim,
    iw_log_likelihood,
    log_normal,
    log_standard_normal,
    mutual_information,
    perplexity,
)
from .probe import discrete_factors, encode_labels, linear_probe
from .profiles import PROFILES, ProfileName, profile_metrics
from .reconstruction import corpus_bleu, exact_match, token_accuracy
from .rounds import plan_rounds

logger = logging.getLogger(__name__)

# Sequences per IW decoder call when not configured: (CPU, GPU). On 2 CPU cores a tiny T5 ran
# fastest per sample with ~40-200 sequences per call and 10x slower with 800 (memory traffic on the
# [B*k,T,V] logits); GPUs want large batches.
DEFAULT_DECODER_BATCH = (128, 1024)

# Mean KL (nats per sentence) under which a model is reported as collapsed even if a unit is "active".
COLLAPSE_KL = 0.1


def check_estimator_settings(section: str, iw_samples: int, mi_mini_batch_size: int) -> None:
    """The one check of the estimators' knobs, for `seq2vae eval` ("eval") and training's validation
    ("validation"): K >= 1 importance samples; M >= 2, since a mixture of one posterior makes the
    mini-batch MI 0 whatever the model."""
    if iw_samples < 1:
        raise ConfigError(f"key '{section}.iw_samples': must be >= 1, got {iw_samples}")
    if mi_mini_batch_size < 2:
        raise ConfigError(f"key '{section}.mi_mini_batch_size': must be >= 2, got {mi_mini_batch_size}")


@dataclass
class EvalConfig:
    iw_samples: int = doc(500, "K importance samples per sentence for the IW bound (He et al. 2019: 500)")
    batch_size: int = doc(16, "sentences per encoder batch")
    decoder_batch_size: int | None = doc(
        None,
        "sequences (sentences x samples) per decoder forward in the IW pass; bounds memory for large K. "
        "None: 1024 on GPU, 128 on CPU (where big batches are bound by memory traffic on the [B*K,T,V] logits)",
    )
    seed: int = doc(0, "seed of every random draw; sentence i's draws depend only on (seed, i)")
    mi_mini_batch_size: int = doc(
        32,
        "M of the mini-batch MI: equal-length groups of at most M sentences (He et al. 2019); the dataset variant uses M = N",
    )
    active_unit_delta: float = doc(0.01, "a latent dimension is active when Var_x[mu_d] exceeds this")
    max_reconstructions: int | None = doc(None, "sentences decoded greedily from mu for reconstruction metrics (None: all)")
    num_examples: int = doc(5, "reconstructions shown in the report")
    num_prior_samples: int = doc(
        100, "sentences decoded from each prior (N(0, I), and the learned prior when the model has one); "
        "on the synthetic corpus their grammaticality is scored"
    )
    free_bits: float | None = doc(
        None, "the training free-bits threshold (nats per dimension): reports the share of KL terms below it "
        "(no gradient there); None: not reported"
    )
    num_interpolations: int = doc(2, "sentence pairs (0,1), (2,3), ... interpolated between their posterior means")
    interpolation_steps: int = doc(5, "points on each interpolation line, endpoints included")
    max_new_tokens: int = doc(64, "generation cap for prior samples and interpolations")
    probe_test_fraction: float = doc(0.2, "held-out share of sentences for the linear probes on mu")
    num_saved_latents: int = doc(1000, "posterior means (with metadata) of the first N sentences kept in the result, for plots")
    profile: ProfileName = doc(
        "ours",
        "also report a reference's numbers in its own units and estimators: ours | park2021 | optimus2020 | he2019 "
        "(docs/CONVENTIONS.md, Profiles); optimus2020 sets iw_samples to its K=100, he2019 to 500",
    )

    def __post_init__(self) -> None:
        check_estimator_settings("eval", self.iw_samples, self.mi_mini_batch_size)
        for name in ("batch_size", "decoder_batch_size", "interpolation_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_examples", "num_prior_samples", "num_interpolations", "max_reconstructions", "num_saved_latents"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"eval.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.probe_test_fraction < 1.0:
            raise ConfigError(f"eval.probe_test_fraction must be in (0, 1), got {self.probe_test_fraction}")
        if self.profile not in PROFILES:
            raise ConfigError(f"eval.profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if PROFILES[self.profile].iw_samples is not None:
            self.iw_samples = PROFILES[self.profile].iw_samples  # the reference hard-codes its K

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


CONVENTIONS = {
    "units": "nats; per-sentence quantities are means over sentences",
    "recon_nll": "-log p(x|z), one z ~ q(z|x) per sentence, summed over target tokens incl. EOS, padding excluded",
    "kl": "analytic KL(q(z|x) || N(0,I)), unweighted (no beta, no free bits)",
    "neg_elbo": "recon_nll + kl",
    "iw_nll": "-[logsumexp_k (log p(x|z_k) + log p(z_k) - log q(z_k|x)) - log K], z_k ~ q(z|x)",
    "ppl_per_token": "exp(sum NLL / predicted target tokens incl. EOS); BART's predicted BOS counts",
    "ppl_per_word": "exp(sum NLL / (whitespace words + 1 EOS per sentence)), as He et al. 2019; a truncated "
    "sentence counts the words of its scored (kept) tokens; num_truncated says how many were",
    "mi_dataset": "I(x;z) with q(z) the mixture of all N evaluated posteriors (cap log N), as Optimus",
    "mi_mini_batch": "I(x;z) with q(z) the mixture of each mini-batch of at most M posteriors of equal target "
    "length (He et al. 2019's length-bucketed batches, remainders included), averaged over sentences",
    "mi_estimator": "one z_i ~ q(z|x_i); log q(z_i|x_i) - log (1/M sum_j q(z_i|x_j)), averaged",
    "active_units": "count of d with Var_x[mu_d(x)] > delta over the whole set, N-1 denominator "
    "(He et al. and Optimus test >= delta)",
    "reconstruction": "greedy decoding from z = mu; token accuracy position-wise over reference tokens incl. EOS; "
    "exact match on token ids; corpus BLEU-4 (no smoothing) on whitespace words of decoded text",
    "probes": "multinomial logistic regression on standardised mu (L-BFGS, L2 1e-3), held-out accuracy vs majority class",
    "profile": "with --profile NAME, the reference's own numbers in its units and estimators (docs/CONVENTIONS.md, Profiles)",
}


# ---------------------------------------------------------------------------------------------- helpers
def sentence_noise(seed: int, sentence_index: int, num_samples: int, latent_dim: int, stream: int = 0) -> torch.Tensor:
    """Standard-normal draws [K, Z] for one sentence, a function of (seed, sentence index, stream) only.

    Stream 0 feeds the posterior samples; stream 1 the sentence's prior draw (decoder reliance).
    """
    entropy = [seed, sentence_index] if stream == 0 else [seed, sentence_index, stream]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.randn(num_samples, latent_dim, generator=generator)


def unwrap(model) -> torch.nn.Module:
    """The Seq2SeqVAE inside a DeepSpeed engine or DDP wrapper (their `.module`), or the model itself."""
    return getattr(model, "module", model)


def _device_and_dtype(vae) -> tuple[torch.device, torch.dtype]:
    parameter = next(vae.parameters())
    return parameter.device, parameter.dtype


@contextlib.contextmanager
def _inference(vae):
    """eval() and no_grad for the duration, restoring training mode (training validation calls this)."""
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        vae.train(was_training)


def _pad_token_id(vae) -> int:
    tokenizer = getattr(vae, "tokenizer", None)
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return vae.backbone.config.pad_token_id


def posterior_pass(
    vae, batch: dict, noise: torch.Tensor, samples_per_call: int, prior_z: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Encodes a batch and scores K posterior samples per sentence through batched decoder calls.

    Args:
        batch: {"input_ids", "attention_mask", "labels"} [B,S] / [B,T].
        noise: [B,K,Z] standard-normal draws; z_k = mu + sigma * noise_k. Sample 0 also serves as the
            single z of the reconstruction term and of the MI estimate.
        samples_per_call: samples per sentence in one `log_likelihood` call ([B, k, Z] -> [B, k]).
        prior_z: [B,Z] draws from N(0, I); when given, two more decoder calls score each sentence
            with the previous sentence's z0 in the batch (NaN in a batch of one) and with its prior z (decoder reliance).
    Returns: CPU float32 tensors mu, logvar, z0 [B,Z]; recon_nll, kl, iw_log_px, mean_log_px, num_tokens [B];
        with prior_z also recon_nll_other_z, recon_nll_prior_z [B].
    """
    device, dtype = _device_and_dtype(vae)
    labels = batch["labels"].to(device)
    mu, logvar = vae.encode(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    mu, logvar = mu.float(), logvar.float()
    # Round z to the model's dtype first so log q and log p(z) score the z the decoder actually sees.
    z = (mu[:, None] + torch.exp(0.5 * logvar)[:, None] * noise.to(device)).to(dtype).float()  # [B,K,Z]
    log_px_z = torch.cat(
        [
            vae.log_likelihood(z[:, start : start + samples_per_call].to(dtype), labels).float()
            for start in range(0, z.shape[1], samples_per_call)
        ],
        dim=1,
    )  # [B,K]
    iw_log_px = iw_log_likelihood(log_px_z, log_standard_normal(z), log_normal(z, mu[:, None], logvar[:, None]))
    reliance = {}
    if prior_z is not None:
        other = -vae.log_likelihood(torch.roll(z[:, 0], 1, dims=0).to(dtype), labels).float()
        if labels.shape[0] == 1:
            other = torch.full_like(other, float("nan"))  # the only other z is its own
        reliance = {
            "recon_nll_other_z": other.cpu(),
            "recon_nll_prior_z": -vae.log_likelihood(prior_z.to(device, dtype), labels).float().cpu(),
        }
    return {
        **reliance,
        "mu": mu.cpu(),
        "logvar": logvar.cpu(),
        "z0": z[:, 0].cpu(),
        "recon_nll": -log_px_z[:, 0].cpu(),
        "kl": gaussian_kl(mu, logvar).cpu(),
        "iw_log_px": iw_log_px.cpu(),
        "mean_log_px": log_px_z.mean(1).cpu(),  # Optimus' reconstruction term averages the K samples
        "num_tokens": count_predicted_tokens(labels).cpu().float(),
    }


def iw_samples_per_call(decoder_batch_size: int | None, batch_size: int, num_samples: int, device: torch.device) -> int:
    """Importance samples per sentence in one decoder call, so that batch_size x samples <= decoder_batch_size.

    Computed from the configured (not the actual) batch size, so a short last batch or a dummy batch
    makes the same number of decoder calls as the others (ZeRO-3 needs equal call counts).
    """
    if decoder_batch_size is None:
        decoder_batch_size = DEFAULT_DECODER_BATCH[device.type == "cuda"]
    return max(1, min(num_samples, decoder_batch_size // batch_size))


def _generation_kwargs(max_new_tokens: int) -> dict:
    # Under several ranks every rank keeps stepping the decoder until all are done (ZeRO-3 safety).
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    if rank_and_world()[1] > 1:
        kwargs["synced_gpus"] = True
    return kwargs


def _strip_generated(ids: list[int], eos_token_id: int | None) -> list[int]:
    """Generated ids -> the predicted target: drop the decoder-start token, keep up to the first EOS."""
    ids = ids[1:]
    if eos_token_id is not None and eos_token_id in ids:
        ids = ids[: ids.index(eos_token_id) + 1]
    return ids


def _generation_parameters(vae) -> list[torch.nn.Parameter]:
    """What `generate` runs: the decoder, the LM head and the VAE's own heads (not the encoder)."""
    backbone = vae.backbone
    chosen = {id(p): p for p in backbone.get_decoder().parameters()}
    chosen.update((id(p), p) for p in backbone.get_output_embeddings().parameters())
    chosen.update((id(p), p) for name, p in vae.named_parameters() if not name.startswith("backbone."))
    return list(chosen.values())


def greedy_decode(vae, z: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
    """z [B,Z] -> greedy token ids per row (decoder start removed, cut after EOS). Under ZeRO-3 the
    decoder is gathered once for the call, not once per generated token."""
    device, dtype = _device_and_dtype(vae)
    with resident_under_zero3(_generation_parameters(vae), device):
        ids = vae.generate(z.to(dtype), **_generation_kwargs(max_new_tokens))
    eos = vae.backbone.config.eos_token_id
    return [_strip_generated(row, eos) for row in ids.tolist()]


def _decode_texts(vae, sequences: list[list[int]]) -> list[str] | None:
    tokenizer = getattr(vae, "tokenizer", None)
    if tokenizer is None:
        return None
    return tokenizer.batch_decode(sequences, skip_special_tokens=True)


def _merge(records: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenates per-batch result dicts (each with an "index" tensor) and sorts by global index."""
    merged = {key: torch.cat([r[key] for r in records]) for key in records[0]}
    order = torch.argsort(merged["index"])
    return {key: value[order] for key, value in merged.items()}


# ---------------------------------------------------------------------------------------------- summary
def summarize(
    stats: dict[str, torch.Tensor],
    *,
    mi_mini_batch_size: int,
    active_unit_delta: float,
    num_words: int | None,
    device: torch.device | None = None,
    free_bits: float | None = None,
) -> tuple[dict, list[str]]:
    """Corpus metrics from per-sentence results in global order.

    Args:
        stats: mu, logvar, z0 [N,Z]; recon_nll, kl, iw_log_px, num_tokens [N].
        num_words: total whitespace words + EOS of what was scored, or None when texts are unknown.
        device: where the O(N^2 Z) dataset MI runs (a GPU makes N = 10^5 quick); CPU by default.
        free_bits: the training free-bits threshold whose floor occupancy is reported (None: not reported).
    Returns: (flat dict of scalar metrics, human-readable notes about collapse / undefined values).
    """
    notes: list[str] = []
    num_sentences, latent_dim = stats["mu"].shape
    recon = stats["recon_nll"].double()
    kl = stats["kl"].double()
    neg_elbo = recon + kl
    iw_nll = -stats["iw_log_px"].double()
    num_tokens = int(stats["num_tokens"].sum())
    metrics = {
        "num_sentences": num_sentences,
        "num_tokens": num_tokens,
        "num_words": num_words,
        "recon_nll": float(recon.mean()),
        "kl": float(kl.mean()),
        "neg_elbo": float(neg_elbo.mean()),
        "iw_nll": float(iw_nll.mean()),
        "ppl_elbo_per_token": perplexity(float(neg_elbo.sum()), num_tokens),
        "ppl_iw_per_token": perplexity(float(iw_nll.sum()), num_tokens),
        "ppl_elbo_per_word": perplexity(float(neg_elbo.sum()), num_words) if num_words else None,
        "ppl_iw_per_word": perplexity(float(iw_nll.sum()), num_words) if num_words else None,
    }
    posteriors = [stats[key].to(device or "cpu") for key in ("mu", "logvar", "z0")]
    mi = mutual_information(*posteriors)
    mini = mutual_information(*posteriors, mini_batch_size=mi_mini_batch_size, lengths=stats["num_tokens"].cpu())
    metrics.update(
        {"mi_dataset": mi.nats, "mi_dataset_components": mi.num_components, "mi_mini_batch": mini.nats,
         "mi_mini_batch_size": mini.num_components, "mi_mini_batch_aggregate": mini.aggregate}
    )
    diagnostics, diagnostic_notes = posterior_diagnostics(stats, mi.nats, mi.num_components, free_bits)
    metrics.update(diagnostics)
    notes += diagnostic_notes
    if num_sentences < 2:
        metrics.update({"active_units": None, "mu_variance": None})
        notes.append(f"active units undefined: the variance of mu needs at least 2 sentences, got N={num_sentences}")
        notes.append("MI is 0 by construction with one sentence (the aggregate posterior is that posterior)")
    else:
        units = active_units(stats["mu"], active_unit_delta)
        metrics.update({"active_units": units.count, "mu_variance": units.variance.tolist()})
    metrics.update(
        {
            "latent_dim": latent_dim,
            "active_unit_delta": active_unit_delta,
            "kl_per_dim": gaussian_kl_per_dim(stats["mu"].double(), stats["logvar"].double()).mean(0).tolist(),
        }
    )
    if metrics["kl"] < COLLAPSE_KL or metrics["active_units"] == 0:
        notes.append(
            f"posterior collapse: mean KL {metrics['kl']:.4f} nats, {metrics['active_units']} of {latent_dim} "
            f"active units, MI {mi.nats:.4f} nats: z carries (almost) no information about x; "
            "the IW bound and the ELBO then both measure the decoder alone"
        )
    return metrics, notes


def scored_words(samples: list[dict], tokenizer) -> tuple[int | None, int | None]:
    """Words + EOS of what the NLL covers, and how many sentences were truncated before scoring.

    A sentence is truncated when its text tokenises (EOS appended, as the shard writer does) to more
    ids than were stored; its words are then counted on the decoded kept ids, so the per-word
    perplexity divides the NLL of the kept tokens by the words those tokens spell.
    Returns (None, None) without texts or a tokenizer.
    """
    words, num_truncated = scored_words_per_sentence(samples, tokenizer)
    return (None, None) if words is None else (sum(words), num_truncated)


def scored_words_per_sentence(samples: list[dict], tokenizer) -> tuple[list[int] | None, int | None]:
    """`scored_words` sentence by sentence: ([words + EOS per sentence], number truncated)."""
    texts = [s.get("text") for s in samples]
    if not all(texts) or tokenizer is None:
        return None, None
    eos = tokenizer.eos_token_id
    words, num_truncated = [], 0
    for start in range(0, len(samples), 1024):
        chunk = samples[start : start + 1024]
        encoded = tokenizer([s["text"] for s in chunk], add_special_tokens=True)["input_ids"]
        for sample, full in zip(chunk, encoded):
            full_length = len(full) + (eos is not None and (not full or full[-1] != eos))
            if full_length > len(sample["input_ids"]):
                num_truncated += 1
                words.append(count_words(tokenizer.decode(list(sample["input_ids"]), skip_special_tokens=True)))
            else:
                words.append(count_words(sample["text"]))
    return words, num_truncated


def _reconstruction_report(hypotheses: dict[int, list[int]], samples: list[dict], vae, num_examples: int) -> dict:
    indices = sorted(hypotheses)
    hyps = [hypotheses[i] for i in indices]
    refs = [samples[i]["input_ids"].tolist() for i in indices]
    correct, total = token_accuracy(hyps, refs)
    report = {
        "num_sentences": len(indices),
        "token_accuracy": correct / total if total else None,
        "exact_match": exact_match(hyps, refs) / len(indices) if indices else None,
        "bleu": None,
        "examples": [],
    }
    hyp_texts, ref_texts = _decode_texts(vae, hyps), _decode_texts(vae, refs)
    if hyp_texts is not None and indices:
        report["bleu"] = corpus_bleu([h.split() for h in hyp_texts], [r.split() for r in ref_texts])
        report["examples"] = [
            {"index": i, "input": ref, "reconstruction": hyp}
            for i, ref, hyp in list(zip(indices, ref_texts, hyp_texts))[:num_examples]
        ]
    return report


def _probe_report(mu: torch.Tensor, samples: list[dict], config: EvalConfig) -> dict:
    factors, skipped = discrete_factors([s.get("meta") for s in samples])
    results: dict = {"factors": {}, "skipped": skipped}
    for name, values in factors.items():
        labels, classes = encode_labels(values)
        try:
            probe = linear_probe(mu, labels, test_fraction=config.probe_test_fraction, seed=config.seed)
        except ValueError as error:
            results["skipped"][name] = str(error)
            continue
        results["factors"][name] = {**probe.to_dict(), "classes": [str(c) for c in classes]}
    for name, why in results["skipped"].items():
        logger.info("no linear probe for metadata field %r: %s", name, why)
    return results


def _prior_and_interpolations(vae, mu: torch.Tensor, samples: list[dict], config: EvalConfig, priors: list) -> tuple[dict, list]:
    """Same inputs on every rank (seeded prior draws, gathered mu), so every rank runs identical generations.

    Returns ({prior name: decoded samples}, interpolations); every prior gets the same seed.
    """
    device, _ = _device_and_dtype(vae)
    samples_by_prior: dict[str, list[str]] = {}
    for prior in priors if config.num_prior_samples > 0 else []:
        z = prior.sample(config.num_prior_samples, torch.Generator().manual_seed(config.seed))
        samples_by_prior[prior.name] = _decode_texts(vae, greedy_decode(vae, z.to(device), config.max_new_tokens)) or []
    interpolations = []
    num_pairs = min(config.num_interpolations, mu.shape[0] // 2)
    weights = torch.linspace(0, 1, config.interpolation_steps)[:, None]  # [steps, 1]
    for pair in range(num_pairs):
        first, second = 2 * pair, 2 * pair + 1
        line = (1 - weights) * mu[first] + weights * mu[second]  # [steps, Z]
        texts = _decode_texts(vae, greedy_decode(vae, line.to(device), config.max_new_tokens))
        interpolations.append(
            {"from": samples[first]["text"], "to": samples[second]["text"], "steps": texts or []}
        )
    return samples_by_prior, interpolations


# ---------------------------------------------------------------------------------------------- drivers
def _score_all_sentences(vae, samples: list[dict], config: EvalConfig) -> tuple[dict[str, torch.Tensor], dict[int, list[int]]]:
    """Runs this rank's rounds, gathers every rank's results; returns (stats in global order, reconstructions).

    Every rank runs the same rounds and the same calls per round (dummy rounds redo batch 0 and drop
    the result), so collectives inside the model (ZeRO-3) and inside `generate` stay matched.
    """
    rank, world_size = rank_and_world()
    device, _ = _device_and_dtype(vae)
    num_sentences = len(samples)
    pad_token_id = _pad_token_id(vae)
    per_call = iw_samples_per_call(config.decoder_batch_size, config.batch_size, config.iw_samples, device)
    max_reconstructions = num_sentences if config.max_reconstructions is None else config.max_reconstructions
    records, hypotheses = [], {}
    rounds = list(plan_rounds(num_sentences, config.batch_size, rank, world_size))
    for round_ in tqdm(rounds, desc="eval", unit="round", disable=rank != 0):
        batch_index = 0 if round_.batch is None else round_.batch
        indices = list(range(batch_index * config.batch_size, min((batch_index + 1) * config.batch_size, num_sentences)))
        batch = collate([samples[i] for i in indices], pad_token_id)
        noise = torch.stack([sentence_noise(config.seed, i, config.iw_samples, vae.config.latent_dim) for i in indices])
        prior_z = torch.cat([sentence_noise(config.seed, i, 1, vae.config.latent_dim, stream=1) for i in indices])
        result = posterior_pass(vae, batch, noise, per_call, prior_z)
        decoded = None
        if round_.first_sentence < max_reconstructions:  # the same decision on every rank
            decoded = greedy_decode(vae, result["mu"].to(device), batch["labels"].shape[1] + 8)
        if round_.batch is None:
            continue
        records.append({"index": torch.tensor(indices), **result})
        if decoded is not None:
            hypotheses.update({i: ids for i, ids in zip(indices, decoded) if i < max_reconstructions})
    gathered = gather_objects((records, hypotheses))
    stats = _merge([record for rank_records, _ in gathered for record in rank_records])
    for _, rank_hypotheses in gathered:
        hypotheses.update(rank_hypotheses)
    assert stats["index"].tolist() == list(range(num_sentences)), "a sentence was lost or duplicated across ranks"
    return stats, hypotheses


def evaluate(model, samples: list[dict], config: EvalConfig | None = None, learned_priors: Sequence = ()) -> dict:
    """Every metric on `samples` (the same list, same order, on every rank).

    Args:
        model: a Seq2SeqVAE (or a wrapper with `.module`).
        samples: dicts {"input_ids": int array ending in EOS, "text": str, "meta": dict}.
        learned_priors: priors fitted to the aggregate posterior (`seq2vae.model.prior`), each sampled
            beside N(0, I) and reported side by side; empty for N(0, I) alone.
    Returns: {"metrics": flat scalars, "reconstruction", "probes", "prior_samples" (N(0, I)),
        "samples_by_prior", "interpolations", "notes", "config", "world_size"}, identical on every rank.
        When the texts are the synthetic corpus, metrics include its ground truth (diagnostics.py).
    Raises: ValueError when there is nothing to evaluate.
    """
    config = config or EvalConfig()
    vae = unwrap(model)
    if not samples:
        raise ValueError("no sentences to evaluate: the input is empty (or every line was skipped)")
    words, num_truncated = scored_words_per_sentence(samples, getattr(vae, "tokenizer", None))
    num_words = None if words is None else sum(words)
    with _inference(vae):
        stats, hypotheses = _score_all_sentences(vae, samples, config)
        metrics, notes = summarize(
            stats,
            mi_mini_batch_size=config.mi_mini_batch_size,
            active_unit_delta=config.active_unit_delta,
            num_words=num_words,
            device=_device_and_dtype(vae)[0],
            free_bits=config.free_bits,
        )
        metrics["num_truncated"] = num_truncated
        if num_words is None:
            notes.append("per-word perplexity omitted: some sentences have no text, or the model has no tokenizer")
        elif num_truncated:
            notes.append(
                f"{num_truncated} of {len(samples)} sentences were truncated: their per-word count covers the kept tokens only"
            )
        priors = [StandardNormalPrior(vae.config.latent_dim), *learned_priors]
        samples_by_prior, interpolations = _prior_and_interpolations(vae, stats["mu"], samples, config, priors)
    for name, texts in samples_by_prior.items():
        metrics[f"prior_{name}_distinct"] = len(set(texts)) / len(texts) if texts else None
    true_log_prob = synthetic_log_probs([s.get("text") for s in samples])
    if true_log_prob is not None:
        metrics.update(
            synthetic_diagnostics(metrics, stats, true_log_prob, samples_by_prior, [i["steps"] for i in interpolations])
        )
    return {
        "metrics": metrics,
        "reconstruction": _reconstruction_report(hypotheses, samples, vae, config.num_examples),
        "probes": _probe_report(stats["mu"], samples, config),
        "prior_samples": samples_by_prior.get(StandardNormalPrior.name, []),
        "samples_by_prior": samples_by_prior,
        "interpolations": interpolations,
        "latents": latent_sample(stats["mu"], samples, config.num_saved_latents),
        "profile": profile_metrics(config.profile, stats, words),
        "notes": notes,
        "config": config.to_dict(),
        "world_size": rank_and_world()[1],
    }


def validate(
    model,
    batches: Iterable[dict],
    *,
    num_samples: int = 5,
    max_batches: int | None = 20,
    seed: int = 0,
    num_reconstructions: int = 3,
    decoder_batch_size: int | None = None,
    mi_mini_batch_size: int = 32,
    active_unit_delta: float = 0.01,
    free_bits: float | None = None,
) -> dict:
    """Cheap periodic validation on each rank's own batches: recon, KL, -ELBO, IW-NLL (small K), PPL, MI, AU.

    Every rank takes part in every round: while any rank still has a batch (and fewer than
    `max_batches` rounds ran), ranks that ran out repeat their first batch and drop the result, so
    the forward count is equal on all ranks (ZeRO-3). Returns the same dict on every rank:
    the scalar metrics of `summarize`, "reconstructions" (a few (input, greedy output) text pairs
    from rank 0's first batch) and "notes".
    """
    vae = unwrap(model)
    rank, _ = rank_and_world()
    device, _ = _device_and_dtype(vae)
    sync_device = collective_device(device)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)  # per-rank stream: ranks see different data
    iterator = iter(batches)
    records: list[dict] = []
    examples: list[dict] = []
    first_batch = None
    local_count = 0
    with _inference(vae):
        for round_index in range(max_batches if max_batches is not None else 2**62):
            batch = next(iterator, None)
            if not any_rank(batch is not None, sync_device):
                break
            if first_batch is None:
                if not all_ranks(batch is not None, sync_device):
                    raise ValueError("validate: some rank has no validation batch at all; every rank needs at least one")
                first_batch = batch
                # One agreed value, so every rank makes the same number of decoder calls per round.
                batch_size_bound = max_over_ranks(batch["labels"].shape[0], sync_device)
                per_call = iw_samples_per_call(decoder_batch_size, batch_size_bound, num_samples, device)
            real = batch is not None
            batch = batch if real else first_batch
            batch_size = batch["labels"].shape[0]
            noise = torch.randn(batch_size, num_samples, vae.config.latent_dim, generator=generator)
            prior_z = torch.randn(batch_size, vae.config.latent_dim, generator=generator)
            result = posterior_pass(vae, batch, noise, per_call, prior_z)
            if round_index == 0 and num_reconstructions > 0:
                # Every rank generates (collective under ZeRO-3); only rank 0's examples are kept.
                count = min(num_reconstructions, batch_size)
                hyps = greedy_decode(vae, result["mu"][:count].to(device), batch["labels"].shape[1] + 8)
                refs = [row[row != -100].tolist() for row in batch["labels"][:count]]
                hyp_texts, ref_texts = _decode_texts(vae, hyps), _decode_texts(vae, refs)
                if hyp_texts is not None:
                    examples = [{"input": r, "reconstruction": h} for r, h in zip(ref_texts, hyp_texts)]
            if real:
                indices = torch.arange(local_count, local_count + batch_size)
                records.append({"index": indices, **result})
                local_count += batch_size
        gathered = gather_objects((records, examples))
    # Global order: rank-major, each rank's batches in order (re-indexed so _merge keeps that order).
    ordered: list[dict] = []
    offset = 0
    for rank_records, _ in gathered:
        for record in rank_records:
            ordered.append({**record, "index": record["index"] + offset})
        offset += sum(len(r["index"]) for r in rank_records)
    if not ordered:
        return {"num_sentences": 0, "notes": ["validate: no validation batches"], "reconstructions": []}
    metrics, notes = summarize(
        _merge(ordered), mi_mini_batch_size=mi_mini_batch_size, active_unit_delta=active_unit_delta, num_words=None,
        device=device, free_bits=free_bits,
    )
    # Scalars only (training logs them); per-word perplexity needs texts, which batches do not carry.
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, list) and "per_word" not in k and k != "num_words"}
    metrics["iw_samples"] = num_samples
    metrics["mi_saturated"] = float(metrics["mi_saturated"])  # a TensorBoard scalar: 1 when MI sits at log N
    return {**metrics, "reconstructions": gathered[0][1], "notes": notes}
