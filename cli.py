"""The `seq2vae` console script: one dispatcher, each subcommand owned by its subpackage.

Subcommand modules are imported lazily so `seq2vae shard --help` never pays for DeepSpeed.
"""

from __future__ import annotations

import importlib
import sys

from .errors import deliver_user_errors

# name -> (module, function, one-line help). Each function takes the remaining argv.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "shard": (".data.cli", "main", "tokenise a corpus into webdataset shards"),
    "train": (".train.cli", "main", "two-phase VAE finetuning (also: torchrun -m seq2vae.train)"),
    "eval": (".evaluation.cli", "main", "evaluation harness: NLL, KL, IW-NLL, PPL, MI, AU, probes"),
    "slurm": (".slurm.cli", "main", "render or submit SLURM jobs from a training config"),
    "quickstart": (".commands.quickstart", "main", "synthetic corpus -> shards -> train -> eval, on CPU"),
    "export": (".checkpoint.export", "main", "write a save_pretrained directory from a run's checkpoint"),
    "generate": (".model.cli", "main", "reconstruct, sample and interpolate with a trained model"),
    "fit-prior": (".evaluation.prior_fit", "main", "fit a Gaussian-mixture prior to a model's aggregate posterior"),
    "sweep": (".commands.sweep", "main", "run a sweep table's rows one after another on this machine, then report"),
    "report": (".evaluation.study_report", "main", "markdown + CSV + figures comparing runs or eval results"),
    "plan": (".commands.plan", "main", "will a config fit a cluster: memory per rank and node, traffic, FLOPs, advice"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: seq2vae <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `seq2vae <command> --help` for a command's options."]
    lines += ["Add --debug (or set SEQ2VAE_DEBUG=1) to see the traceback behind an error message."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"seq2vae: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = SUBCOMMANDS[name]
    function = getattr(importlib.import_module(module_name, __package__), function_name)
    # A user's mistake is one line on stderr and exit code 2; --debug / SEQ2VAE_DEBUG=1 shows the traceback.
    return deliver_user_errors(name, function, rest)
