"""Prior-sample validity of a trained quickstart model under N(0, I) and learned priors, side by side.

    python bench/bench_priors.py --quickstart runs/quickstart [--samples 300] [--components 16,64] [--temperatures 1,0.7] [--flow]
    python bench/bench_priors.py --model MODEL_DIR --shards SHARDS ...   (any model trained on the synthetic corpus)

Decodes greedy samples from each prior with the same seed and scores them with the synthetic
grammar (grammatical, well formed, distinct, factor combinations covered out of 108). Two reference
rows bound what any prior can reach with this decoder: codes z ~ q(z|x) of held-out sentences
(what a perfect fit of the aggregate posterior would give) and their means mu. `--flow` adds the
RealNVP prior (`seq2vae.model.prior_flow`) fitted to the same points. Every learned prior's density
is also scored on held-out draws z ~ q(z|x) (mean log p(z), nats: higher is a closer fit of q(z)).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from seq2vae.data.synthetic import parse_sentence
from seq2vae.evaluation.data import load_samples
from seq2vae.evaluation.diagnostics import text_quality
from seq2vae.evaluation.prior_fit import encode_posteriors, posterior_draws
from seq2vae.model import Seq2SeqVAE
from seq2vae.model.prior import StandardNormalPrior, fit_gaussian_mixture
from seq2vae.model.prior_flow import fit_flow


def decode(vae, z: torch.Tensor, batch: int = 100) -> list[str]:
    texts = []
    with torch.no_grad():
        for start in range(0, z.shape[0], batch):
            ids = vae.generate(z[start : start + batch], max_new_tokens=64)
            texts += vae.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quickstart", help="a `seq2vae quickstart --output` directory (its model/ and shards/)")
    parser.add_argument("--model", help="a saved model directory (instead of --quickstart)")
    parser.add_argument("--shards", help="its synthetic-corpus shards (with --model)")
    parser.add_argument("--flow", action="store_true", help="also fit and score the RealNVP flow prior")
    parser.add_argument("--flow-steps", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--fit-sentences", type=int, default=5000)
    parser.add_argument("--components", default="16,64")
    parser.add_argument("--temperatures", default="1,0.7")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if bool(args.quickstart) == bool(args.model and args.shards):
        parser.error("give --quickstart, or --model and --shards")
    model_dir, shards = (Path(args.quickstart) / "model", Path(args.quickstart) / "shards") if args.quickstart else (
        Path(args.model), Path(args.shards))
    vae = Seq2SeqVAE.from_pretrained(model_dir).eval()
    train, _ = load_samples(shards, vae.tokenizer, split="train", max_sentences=args.fit_sentences)
    valid, _ = load_samples(shards, vae.tokenizer, split="valid", max_sentences=args.samples)
    rows = []
    mu, logvar = encode_posteriors(vae, valid)
    held_out = posterior_draws(mu, logvar, draws_per_sentence=2, seed=5)

    def row(name: str, z: torch.Tensor, seconds: float = 0.0, prior=None) -> None:
        quality = text_quality(decode(vae, z), parse_sentence)
        fit = float(prior.log_prob(held_out).mean()) if prior is not None else None
        rows.append({"prior": name, **quality, "fit_s": round(seconds, 1), "held_out_log_prob": fit})
        print(f"{name:<28} grammatical {100 * quality['grammatical']:5.1f}%  well-formed {100 * quality['well_formed']:5.1f}%  "
              f"distinct {100 * quality['distinct']:5.1f}%  factor combinations {quality['factor_combinations']:3d}/108"
              + (f"  held-out log p(z) {fit:.2f}" if fit is not None else "")
              + (f"  (fit {seconds:.1f} s)" if seconds else ""), flush=True)

    def generator() -> torch.Generator:  # the same draws for every prior
        return torch.Generator().manual_seed(1)

    standard = StandardNormalPrior(vae.config.latent_dim)
    row("N(0, I)", standard.sample(args.samples, generator()), prior=standard)
    start = time.perf_counter()
    points = posterior_draws(*encode_posteriors(vae, train), draws_per_sentence=2, seed=0)
    print(f"encoded {len(train)} training sentences in {time.perf_counter() - start:.1f} s", flush=True)
    for components in [int(c) for c in args.components.split(",")]:
        start = time.perf_counter()
        prior = fit_gaussian_mixture(points, components, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - start
        for temperature in [float(t) for t in args.temperatures.split(",")]:
            prior.temperature = temperature
            row(f"GMM {components}, temperature {temperature:g}", prior.sample(args.samples, generator()), seconds, prior)
    if args.flow:
        start = time.perf_counter()
        flow = fit_flow(points, steps=args.flow_steps)
        seconds = time.perf_counter() - start
        for temperature in [float(t) for t in args.temperatures.split(",")]:
            flow.temperature = temperature
            row(f"flow, temperature {temperature:g}", flow.sample(args.samples, generator()), seconds, flow)
    row("reference: z ~ q(z|x) held-out", mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator()))
    row("reference: mu held-out", mu)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
