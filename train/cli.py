"""`seq2vae train` and `python -m seq2vae.train` (also under torchrun): the same arguments.

    seq2vae train --config configs/quickstart.yaml [--resume auto|never|PATH] [key=value ...]
    torchrun --nproc_per_node 2 -m seq2vae.train --config configs/debug-zero3.yaml run_dir=runs/x
    seq2vae train --help-config      # every config key with its type, default and help
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import describe
from ..distributed import shutdown_world
from ..errors import UserError, deliver_user_errors, is_reporting_rank
from .config import PhaseConfig, TrainConfig, load_train_config
from .run_lock import exit_with_launcher
from .signals import REQUEUE_EXIT_CODE
from .trainer import run


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="seq2vae train",
        description="Two-phase VAE finetuning of a seq2seq backbone on DeepSpeed (one process, or torchrun).",
        epilog="Overrides are dotted keys: optim.lr=3e-4 phases.1.steps=2000 data.micro_batch_size=16",
    )
    parser.add_argument("--config", help="training config YAML (see configs/)")
    parser.add_argument("--resume", help="auto (latest checkpoint of run_dir, if any), never, or a checkpoint path")
    parser.add_argument("--help-config", action="store_true", help="print every config key and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback behind an error message (or SEQ2VAE_DEBUG=1)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_intermixed_args(argv)  # overrides may sit before and after options


def main(argv: list[str] | None = None) -> int:
    """A user's mistake is one line on stderr from rank 0 and exit code 2 (see seq2vae.errors)."""
    return deliver_user_errors("train", _train, list(sys.argv[1:] if argv is None else argv))


def _train(argv: list[str]) -> int:
    args = parse_args(argv)

    if args.help_config:
        print(describe(TrainConfig))
        print(describe(PhaseConfig, "phases.N."))
        return 0
    overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
    config = load_train_config(args.config, overrides)

    exit_with_launcher()  # a rank whose torchrun was SIGKILLed stops instead of training on
    try:
        summary = run(config)
    except UserError:
        # Every rank raised at the same point (seq2vae.train.failures), so the group can go down; one
        # left up at exit can abort the process (SIGABRT) and turn exit code 2 into a crash.
        shutdown_world()
        raise
    if summary["exit_code"] == REQUEUE_EXIT_CODE:
        if is_reporting_rank():
            # torchrun reports any non-zero exit as FAILED; this line says what the 75 means.
            print(
                f"seq2vae train: preempted at step {summary['final_step']}: checkpoint {summary['checkpoint']} is "
                f"complete; exiting with {REQUEUE_EXIT_CODE} (requeue), which torchrun lists as a failure",
                file=sys.stderr,
            )
        # Leave at once: the first rank to exit makes torchrun SIGTERM the others, and a rank still in
        # interpreter shutdown (where Python resets signal handlers to default) would die of it instead
        # of reporting 75. The checkpoint is complete and every file is closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(REQUEUE_EXIT_CODE)
    shutdown_world()
    return int(summary["exit_code"])
