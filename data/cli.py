"""`seq2vae shard`: tokenise a corpus into webdataset shards with meta.json (see `seq2vae.data.shards`)."""

from __future__ import annotations

import argparse
import logging

from .shards import write_shards


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2vae shard",
        description="Tokenise text, JSONL or Hugging Face datasets into webdataset shards for seq2vae training.",
    )
    parser.add_argument("inputs", nargs="+", help="text/JSONL files (.gz too), local HF dataset dirs or hub dataset names")
    parser.add_argument("--output", required=True, help="output directory for the shards and meta.json")
    parser.add_argument("--tokenizer", required=True, help="tokenizer name or path (AutoTokenizer), usually the backbone")
    parser.add_argument(
        "--format", default="auto", choices=["auto", "text", "labeled", "jsonl", "hf"],
        help="input kind (default: by extension; 'labeled' = label<TAB>text lines, Optimus' Yelp files, label kept as metadata)",
    )
    parser.add_argument(
        "--text-field", default="text", help="JSONL / dataset field holding the text; other fields become metadata",
    )
    parser.add_argument("--split", default=None, help="split of Hugging Face dataset inputs (default: train)")
    parser.add_argument(
        "--max-length", type=int, default=256,
        help="longest token sequence kept, EOS included (longer ones are truncated and counted)",
    )
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per shard")
    parser.add_argument(
        "--valid-fraction", type=float, default=0.0, help="fraction of the inputs sent to the valid split (seeded)",
    )
    parser.add_argument("--valid", nargs="+", default=[], metavar="INPUT", help="separate inputs for the valid split")
    parser.add_argument(
        "--test", nargs="+", default=[], metavar="INPUT",
        help="inputs for the test split, kept apart from train and valid (`seq2vae eval --split test`)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/valid draw")
    parser.add_argument("--workers", type=int, default=1, help="tokenisation processes")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping and counting it")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in --output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # InputError / MetaError are the user's to fix: cli.main prints them in one line, exit 2.
    meta = write_shards(
        args.inputs,
        args.output,
        args.tokenizer,
        valid_inputs=args.valid,
        valid_fraction=args.valid_fraction,
        test_inputs=args.test,
        seed=args.seed,
        max_length=args.max_length,
        shard_size=args.shard_size,
        text_field=args.text_field,
        input_format=args.format,
        hf_split=args.split,
        workers=args.workers,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    counts = meta["counts"]
    splits = meta["splits"]
    print(
        f"wrote {splits['train']['num_samples']} train / {splits['valid']['num_samples']} valid / "
        f"{splits['test']['num_samples']} test samples to {args.output}: "
        + ", ".join(f"{key}={value}" for key, value in counts.items())
    )
    return 0
