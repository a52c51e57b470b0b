"""`seq2vae fit-prior`: fit a learned prior to a trained model's aggregate posterior.

    seq2vae fit-prior --model MODEL_DIR --data SHARDS [--split train] [--components 64]
    seq2vae fit-prior --kind flow --model MODEL_DIR --data SHARDS [--flow-steps 3000]

Encodes up to --max-sentences training sentences, draws --draws-per-sentence z ~ q(z|x) from each,
fits a Gaussian mixture by EM (`seq2vae.model.prior`, the default) or a RealNVP flow by maximum
likelihood (`seq2vae.model.prior_flow`) and saves it into the model directory (prior_gmm.* or
prior_flow.*), where `seq2vae generate --sample`, `seq2vae eval` and the report find it. N(0, I) stays
available (`generate --prior standard_normal`); eval samples every saved prior side by side.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ..data.collate import collate
from ..errors import UserError
from ..model.prior import GaussianMixturePrior, fit_gaussian_mixture
from ..model.prior_flow import FlowPrior, fit_flow
from .data import load_samples
from .harness import unwrap

logger = logging.getLogger("seq2vae.fit_prior")


class FitPriorError(UserError, ValueError):
    """A `seq2vae fit-prior` argument the command cannot use."""


def encode_posteriors(vae, samples: list[dict], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """mu, logvar [N,Z] (float32, CPU) of every sample, in order."""
    vae = unwrap(vae)
    parameter = next(vae.parameters())
    pad = vae.tokenizer.pad_token_id if vae.tokenizer is not None else vae.backbone.config.pad_token_id
    mus, logvars = [], []
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                batch = collate(samples[start : start + batch_size], pad)
                mu, logvar = vae.encode(batch["input_ids"].to(parameter.device), batch["attention_mask"].to(parameter.device))
                mus.append(mu.float().cpu())
                logvars.append(logvar.float().cpu())
    finally:
        vae.train(was_training)
    return torch.cat(mus), torch.cat(logvars)


def posterior_draws(mu: torch.Tensor, logvar: torch.Tensor, draws_per_sentence: int, seed: int) -> torch.Tensor:
    """[draws x N, Z] samples z ~ q(z|x): the aggregate posterior's points the mixture is fitted to."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat(
        [mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator) for _ in range(draws_per_sentence)]
    )


def fit_learned_prior(
    vae, samples: list[dict], *, kind: str = "gmm", num_components: int = 64, flow_steps: int = 3000,
    draws_per_sentence: int = 2, temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
) -> GaussianMixturePrior | FlowPrior:
    """A prior fitted to draws z ~ q(z|x) of `samples` (the aggregate posterior): a Gaussian mixture of
    `num_components` by EM (kind "gmm") or a RealNVP flow trained for `flow_steps` (kind "flow").

    `temperature` is stored with the prior and scales its deviations when sampling (1: the fitted
    q(z); below 1 trades diversity for samples nearer the encoded sentences).
    """
    if temperature <= 0:
        raise FitPriorError(f"temperature must be > 0, got {temperature}")
    if kind not in ("gmm", "flow"):
        raise FitPriorError(f"kind must be gmm or flow, got {kind!r}")
    points = posterior_draws(*encode_posteriors(vae, samples, batch_size), draws_per_sentence, seed)
    if kind == "flow":
        prior = fit_flow(points, steps=flow_steps, seed=seed)
    else:
        prior = fit_gaussian_mixture(points, num_components, generator=torch.Generator().manual_seed(seed))
    prior.temperature = temperature
    prior.record.update({"num_sentences": len(samples), "draws_per_sentence": draws_per_sentence,
                         "seed": seed})
    return prior


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2vae fit-prior", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a save_pretrained / `seq2vae export` directory (the prior is saved there)")
    parser.add_argument("--data", required=True, help="shard directory or .txt / .jsonl file of training sentences")
    parser.add_argument("--split", default="train", help="shard split to encode (default: %(default)s)")
    parser.add_argument("--max-sentences", type=int, default=5000, help="sentences encoded (default: %(default)s)")
    parser.add_argument("--kind", choices=("gmm", "flow"), default="gmm",
                        help="gmm: Gaussian mixture by EM; flow: RealNVP by maximum likelihood (default: %(default)s)")
    parser.add_argument("--components", type=int, default=64, help="mixture components (default: %(default)s)")
    parser.add_argument("--flow-steps", type=int, default=3000, help="flow: optimizer steps (default: %(default)s)")
    parser.add_argument("--draws-per-sentence", type=int, default=2, help="z ~ q(z|x) per sentence (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="scale of the components' deviations when sampling (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for flag, value in (("--max-sentences", args.max_sentences), ("--components", args.components),
                        ("--draws-per-sentence", args.draws_per_sentence), ("--flow-steps", args.flow_steps)):
        if value < 1:
            raise FitPriorError(f"{flag} must be >= 1, got {value}")
    from ..model import Seq2SeqVAE

    model_dir = Path(args.model)
    if not (model_dir / "vae_config.json").is_file():
        raise FitPriorError(f"--model {model_dir}: not a saved seq2vae model (no vae_config.json); see `seq2vae export`")
    vae = Seq2SeqVAE.from_pretrained(model_dir)
    samples, _ = load_samples(args.data, vae.tokenizer, split=args.split, max_sentences=args.max_sentences,
                              embedding_size=vae.backbone.get_input_embeddings().num_embeddings)
    if args.kind == "gmm" and len(samples) < args.components:
        raise FitPriorError(f"--data {args.data}: {len(samples)} sentences cannot fit {args.components} components")
    prior = fit_learned_prior(vae, samples, kind=args.kind, num_components=args.components, flow_steps=args.flow_steps,
                              draws_per_sentence=args.draws_per_sentence, temperature=args.temperature, seed=args.seed)
    path = prior.save(model_dir)
    what = f"a {args.components}-component Gaussian mixture" if args.kind == "gmm" else "a RealNVP flow"
    print(f"fitted {what} to q(z) of {len(samples)} sentences "
          f"(mean log-likelihood {prior.record['mean_log_likelihood']:.2f} nats); saved {path}")
    return 0
