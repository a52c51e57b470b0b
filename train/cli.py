"""`seq2vae train` and `python -m seq2vae.train` (also under torchrun): the same arguments.

    seq2vae train --config configs/quickstart.yaml [--resume auto|never|PATH] [key=value ...]
    torchrun --nproc_per_node 2 -m seq2vae.train --config configs/debug-zero3.yaml run_dir=runs/x
    seq2vae train --help-config      # every config key with its type, default and help
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import ConfigError


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="seq2vae train",
        description="Two-phase VAE finetuning of a seq2seq backbone on DeepSpeed (one process, or torchrun).",
        epilog="Overrides are dotted keys: optim.lr=3e-4 phases.1.steps=2000 data.micro_batch_size=16",
    )
    parser.add_argument("--config", help="training config YAML (see configs/)")
    parser.add_argument("--resume", help="auto (latest checkpoint of run_dir, if any), never, or a checkpoint path")
    parser.add_argument("--help-config", action="store_true", help="print every config key and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    from .config import PhaseConfig, TrainConfig, load_train_config

    if args.help_config:
        from ..config import describe

        print(describe(TrainConfig))
        print(describe(PhaseConfig, "phases.N."))
        return 0
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    try:
        config = load_train_config(args.config, overrides)
    except ConfigError as error:
        print(f"seq2vae train: {error}", file=sys.stderr)
        return 2
    from .distributed import shutdown_world
    from .signals import REQUEUE_EXIT_CODE
    from .trainer import run

    from .durability import DamagedCheckpointError

    try:
        summary = run(config)
    except DamagedCheckpointError as error:  # raised on every rank alike, before any training step
        print(f"seq2vae train: {error}", file=sys.stderr, flush=True)
        shutdown_world()
        return 2
    if summary["exit_code"] == REQUEUE_EXIT_CODE:
        # Leave at once: the first rank to exit makes torchrun SIGTERM the others, and a rank still in
        # interpreter shutdown (where Python resets signal handlers to default) would die of it instead
        # of reporting 75. The checkpoint is complete and every file is closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(REQUEUE_EXIT_CODE)
    shutdown_world()
    return int(summary["exit_code"])
