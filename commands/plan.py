"""`seq2vae plan`: will a training config fit a cluster layout, and what should it use?

    seq2vae plan --config configs/flan-t5-xxl-zero3.yaml --nodes 4 --gpus-per-node 8
    seq2vae plan --config run.yaml data.micro_batch_size=16 --nodes 1 --gpus-per-node 8 --gpu-memory-gib 40 --json

Reads the backbone's config only (a hub name needs network access to its config.json, or give a
local directory), never its weights. Exit status 0 when the run fits, 1 when it does not, 2 on a
bad config or option.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..config import ConfigError
from ..plan import ClusterLayout
from ..plan.report import render_plan
from ..train.capacity import plan_training_run
from ..train.config import load_train_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2vae plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training config YAML")
    parser.add_argument("--nodes", type=int, required=True, help="nodes in the job")
    parser.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (ranks) per node")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU (default 80)")
    parser.add_argument("--host-memory-gib", type=float, default=512.0, help="host memory per node (default 512)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense TFLOP/s of one GPU (for MFU)")
    parser.add_argument("--gpu", default=None, help="GPU name to look its peak up (e.g. H100, A100, L40S)")
    parser.add_argument("--max-length", type=int, default=None, help="source length in tokens; default: the shards' max_length")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="training-config overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    config = load_train_config(args.config, args.overrides)
    try:
        layout = ClusterLayout(
            args.nodes, args.gpus_per_node, args.gpu_memory_gib, args.host_memory_gib, args.peak_tflops, args.gpu
        )
        plan = plan_training_run(config, layout, args.max_length)
    except (ValueError, OSError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(str(error)) from error  # a bad option or an unreadable backbone config: exit 2
    print(json.dumps(plan.to_dict(), indent=2) if args.json else render_plan(plan))
    return 0 if plan.fits else 1
