"""`seq2vae generate`: reconstruct, sample and interpolate with a saved model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import UserError
from .prior import LEARNED_PRIORS, saved_prior


class GenerateArgumentError(UserError):
    """A `seq2vae generate` argument out of range, or a model it cannot use."""


# flag -> (attribute, lowest valid value, whether the bound itself is valid)
_LOWER_BOUNDS = {
    "--sample": ("sample", 0, True),
    "--num-beams": ("num_beams", 1, True),
    "--steps": ("steps", 2, True),
    "--max-new-tokens": ("max_new_tokens", 1, True),
    "--temperature": ("temperature", 0.0, False),
    "--top-p": ("top_p", 0.0, False),
}


def check_args(args: argparse.Namespace) -> None:
    """GenerateArgumentError naming the flag of the first value out of range."""
    for flag, (name, bound, inclusive) in _LOWER_BOUNDS.items():
        value = getattr(args, name)
        if value < bound or (value == bound and not inclusive):
            relation = ">=" if inclusive else ">"
            raise GenerateArgumentError(f"{flag} must be {relation} {bound}, got {value}")
    if args.top_p > 1:
        raise GenerateArgumentError(f"--top-p must be <= 1, got {args.top_p}")
    model = Path(args.model)
    if not (model / "vae_config.json").is_file():
        raise GenerateArgumentError(f"--model {model}: not a saved seq2vae model (no vae_config.json); see `seq2vae export`")
    if not (model / "tokenizer_config.json").is_file():
        raise GenerateArgumentError(
            f"--model {model} has no tokenizer files (tokenizer_config.json): generate turns text into codes and "
            "codes into text with the model's tokenizer; save it into the model directory"
        )


def _chosen_prior(model: Path, choice: str):
    """The learned prior for `--prior gmm` / `flow` / `auto` (None means N(0, I))."""
    if choice == "standard_normal":
        return None
    learned = saved_prior(model, choice)
    if choice != "auto" and learned is None:
        raise GenerateArgumentError(f"--prior {choice}: {model} has no {LEARNED_PRIORS[choice][0]}; "
                                    f"fit one with `seq2vae fit-prior --kind {choice} --model {model} ...`")
    return learned


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2vae generate", description=__doc__)
    parser.add_argument("--model", required=True, help="a save_pretrained / `seq2vae export` directory")
    parser.add_argument("--reconstruct", nargs="+", metavar="TEXT", default=[], help="texts to decode from their posterior mean")
    parser.add_argument("--sample", type=int, default=0, metavar="N", help="decode N codes drawn from the prior")
    parser.add_argument(
        "--prior", choices=("auto", "standard_normal", "gmm", "flow"), default="auto",
        help="prior of --sample: gmm / flow are the mixture / flow `seq2vae fit-prior` saved in the model "
        "directory, standard_normal is N(0, I); auto takes gmm, else flow, else N(0, I) (default: %(default)s)",
    )
    parser.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="decode points between two texts' codes")
    parser.add_argument("--steps", type=int, default=5, help="points on an interpolation, end points included")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--do-sample", action="store_true", help="sample tokens instead of greedy/beam decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not (args.reconstruct or args.sample or args.interpolate):
        build_parser().error("nothing to do: give --reconstruct, --sample and/or --interpolate")
    check_args(args)
    from . import Seq2SeqVAE

    torch.manual_seed(args.seed)
    vae = Seq2SeqVAE.from_pretrained(args.model).eval()
    decoding = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "do_sample": args.do_sample}
    if args.do_sample:
        decoding |= {"top_p": args.top_p, "temperature": args.temperature}
    results: dict[str, list] = {}
    if args.reconstruct:
        results["reconstructions"] = [
            {"input": text, "output": output}
            for text, output in zip(args.reconstruct, vae.reconstruct(args.reconstruct, **decoding))
        ]
    if args.sample:
        generator = torch.Generator().manual_seed(args.seed)
        prior = _chosen_prior(Path(args.model), args.prior)
        results["prior"] = "standard_normal" if prior is None else f"{prior.name} (temperature {prior.temperature:g})"
        results["samples"] = vae.sample(args.sample, generator=generator, prior=prior, **decoding)
    if args.interpolate:
        results["interpolation"] = vae.interpolate(*args.interpolate, steps=args.steps, **decoding)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for item in results.get("reconstructions", []):
        print(f"input:  {item['input']}\noutput: {item['output']}\n")
    if "samples" in results:
        print(f"samples from the prior: {results['prior']}")
    for index, text in enumerate(results.get("samples", [])):
        print(f"sample {index}: {text}")
    for index, text in enumerate(results.get("interpolation", [])):
        print(f"step {index}/{args.steps - 1}: {text}")
    return 0
