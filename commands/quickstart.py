"""`seq2vae quickstart`: the whole pipeline on a fresh machine, no GPU and no hub needed.

synthetic corpus -> offline tokenizer -> webdataset shards -> phase 1 (autoencoder warm-up) and
phase 2 (VAE) on DeepSpeed -> export -> evaluation harness table.

Each stage reuses what an earlier run of the same output directory finished (and says so), so an
interrupted quickstart picks up where it stopped; training resumes from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..checkpoint.export import export_run
from ..data.shards import write_shards
from ..data.synthetic import write_jsonl
from ..data.tokenizer import train_tokenizer
from ..distributed import shutdown_world
from ..evaluation import cli as evaluation_cli
from ..evaluation.data import load_samples
from ..evaluation.prior_fit import fit_learned_prior
from ..evaluation.study_report import write_report
from ..model import Seq2SeqVAE
from ..model.debug import DEBUG_BACKBONES
from ..train.config import load_train_config
from ..train.trainer import run

log = logging.getLogger("seq2vae.quickstart")

QUICKSTART_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
# The learned prior (bench/RESULTS.md, "Prior samples"): of 300 greedy decodes, 31% of N(0, I) draws are
# sentences of the grammar, 76% of a 64-component mixture's at temperature 1 and 91% at 0.5 (decodes of
# z ~ q(z|x) itself reach only 88%: the decoder is not robust to the posterior's own noise).
PRIOR_COMPONENTS = 64
PRIOR_TEMPERATURE = 0.5
PRIOR_FIT_SENTENCES = 5000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2vae quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/quickstart", help="directory for corpus, shards, run and results")
    parser.add_argument(
        "--backbone", default="debug-t5",
        help="debug-t5 / debug-bart (tiny random backbone, offline tokenizer) or a pretrained name or "
        "path such as t5-small (needs the weights: hub access or a local copy)",
    )
    parser.add_argument("--sentences", type=int, default=20_000, help="synthetic corpus size")
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--vocab-size", type=int, default=1000, help="offline tokenizer size (debug backbones)")
    parser.add_argument("--iw-samples", type=int, default=100, help="importance samples for the final IW-NLL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior-components", type=int, default=PRIOR_COMPONENTS,
                        help="components of the Gaussian-mixture prior fitted to q(z) after training (default: %(default)s)")
    parser.add_argument("--prior-temperature", type=float, default=PRIOR_TEMPERATURE,
                        help="scale of its component deviations when sampling (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training-config overrides")
    return parser


def prepare_corpus(output: Path, sentences: int, seed: int) -> Path:
    corpus = output / "corpus.jsonl"
    if corpus.is_file():
        log.info("corpus: reusing %s", corpus)
        return corpus
    partial = corpus.with_suffix(".jsonl.tmp")
    write_jsonl(partial, sentences, seed)
    partial.rename(corpus)
    log.info("corpus: wrote %d synthetic sentences with their factors to %s", sentences, corpus)
    return corpus


def prepare_tokenizer(output: Path, corpus: Path, backbone: str, vocab_size: int) -> str:
    """The offline tokenizer for debug backbones; a pretrained backbone brings its own."""
    if backbone not in DEBUG_BACKBONES:
        return backbone
    import json

    directory = output / "tokenizer"
    if (directory / "tokenizer.json").is_file():
        log.info("tokenizer: reusing %s", directory)
        return str(directory)
    with corpus.open() as lines:
        train_tokenizer((json.loads(line)["text"] for line in lines), directory, vocab_size=vocab_size)
    log.info("tokenizer: trained a %d-entry BPE vocabulary offline, saved to %s", vocab_size, directory)
    return str(directory)


def prepare_shards(output: Path, corpus: Path, tokenizer: str, valid_fraction: float, seed: int) -> Path:
    directory = output / "shards"
    if (directory / "meta.json").is_file():
        log.info("shards: reusing %s", directory)
        return directory
    write_shards(
        [str(corpus)], directory, tokenizer, valid_fraction=valid_fraction, seed=seed, max_length=64,
        shard_size=2000, text_field="text", overwrite=True,
    )
    log.info("shards: wrote webdataset shards and meta.json to %s", directory)
    return directory


def fit_prior(model_dir: Path, shards: Path, components: int, temperature: float, seed: int) -> Path:
    """The learned prior, fitted to q(z) of the training sentences and saved beside the model."""
    vae = Seq2SeqVAE.from_pretrained(model_dir)
    samples, _ = load_samples(shards, vae.tokenizer, split="train", max_sentences=PRIOR_FIT_SENTENCES)
    prior = fit_learned_prior(vae, samples, num_components=components, temperature=temperature, seed=seed)
    path = prior.save(model_dir)
    log.info("prior: fitted a %d-component Gaussian mixture (temperature %g) to q(z) of %d training sentences, saved to %s",
             components, temperature, len(samples), path)
    return path


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may sit before and after options
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)

    corpus = prepare_corpus(output, args.sentences, args.seed)
    tokenizer = prepare_tokenizer(output, corpus, args.backbone, args.vocab_size)
    shards = prepare_shards(output, corpus, tokenizer, args.valid_fraction, args.seed)

    run_dir = output / "run"
    config = load_train_config(
        QUICKSTART_CONFIG,
        [f"run_dir={run_dir}", f"data.train={shards}", f"model.backbone={args.backbone}",
         f"model.tokenizer={tokenizer}", f"seed={args.seed}", *args.overrides],
    )
    summary = run(config)
    shutdown_world()  # the evaluation below runs in a world of one, without a process group
    if summary["status"] != "completed":
        log.warning("training %s at step %d; run the same command again to resume", summary["status"], summary["final_step"])
        return summary["exit_code"]
    model_dir = export_run(run_dir, output / "model")
    log.info("training finished at step %d; exported the model to %s", summary["final_step"], model_dir)
    fit_prior(model_dir, shards, args.prior_components, args.prior_temperature, args.seed)

    # Inside the run directory, so the report finds the run's curves and its final metrics together.
    metrics = run_dir / "eval.json"
    status = evaluation_cli.main([
        "--model", str(model_dir), "--data", str(shards), "--split", "valid",
        "--iw-samples", str(args.iw_samples), "--seed", str(args.seed), "--output", str(metrics),
        "--free-bits", str(config.phases[-1].free_bits),
    ])
    if status != 0:
        return status
    report = write_report([run_dir], output / "report")
    print(f"\nmetrics:      {metrics}")
    print(f"report:       {report}   (curves, KL per dimension, PCA of mu by factor)")
    print(f"model:        {model_dir}   (try: seq2vae generate --model {model_dir} --sample 5)")
    print(f"tensorboard:  tensorboard --logdir {run_dir / 'tensorboard'} --samples_per_plugin=text=100")
    return status
