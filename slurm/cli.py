"""`seq2vae slurm render|submit`: an sbatch script from a training config and cluster options.

    seq2vae slurm render --config run.yaml --nodes 2 --gpus-per-node 8 --time 1-00:00:00 optim.lr=3e-4 > job.sbatch
    seq2vae slurm submit --config run.yaml --kind sweep --sweep lrs.tsv --partition gpu

The job options are the fields of `seq2vae.slurm.options.JobOptions` (`--help` lists them).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import typing
from typing import Literal, get_args, get_origin

from ..config import ConfigError
from .cluster import submit
from .options import JobOptions
from .render import JOB_KINDS, RenderedJob, render_job
from .snapshot import offline_overrides

# Repeatable list options get singular flag names.
_FLAG_NAMES = {"sbatch_lines": "--sbatch-line", "setup_lines": "--setup"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2vae slurm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("render", "print the sbatch script to stdout (and create the log directory)"),
        ("submit", "render, save the script in the log directory, sbatch it, print the job id"),
    ):
        command = commands.add_parser(name, help=help_, description=help_)
        command.add_argument("--config", required=True, help="training (or, for --kind eval, evaluation) config YAML")
        command.add_argument("--kind", choices=JOB_KINDS, default="train", help="job template (default: train)")
        command.add_argument("--sweep", metavar="TABLE.tsv", help="sweep table, one row of overrides per array task (--kind sweep)")
        _add_option_flags(command)
        command.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every task")
    return parser


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(JobOptions)
    for field in dataclasses.fields(JobOptions):
        flag = _FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        annotation = hints[field.name]
        help_ = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if annotation is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=field.default, help=help_)
        elif get_origin(annotation) is list:
            parser.add_argument(flag, dest=field.name, action="append", default=[], help=help_ + " (repeatable)")
        elif get_origin(annotation) is Literal:
            parser.add_argument(flag, dest=field.name, choices=get_args(annotation), default=field.default, help=help_)
        else:
            inner = [arg for arg in get_args(annotation) if arg is not type(None)] or [annotation]
            parser.add_argument(flag, dest=field.name, type=inner[0], default=field.default, help=help_)


def _render(args: argparse.Namespace) -> RenderedJob:
    options = JobOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(JobOptions)})
    overrides = list(args.overrides)
    if args.kind != "eval":
        # Jobs run with HF_HUB_OFFLINE=1: hub names become local snapshots here, once (downloaded if needed).
        overrides += offline_overrides(args.config, overrides, options.module)
    job = render_job(args.kind, args.config, overrides, options, sweep_table=args.sweep)
    # sbatch does not create the log directory; a job whose log cannot be opened fails without a word.
    job.output_dir.mkdir(parents=True, exist_ok=True)
    return job


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        job = _render(args)
    except ConfigError as error:
        print(f"seq2vae slurm {args.command}: error: {error}", file=sys.stderr)
        return 2
    if args.command == "render":
        sys.stdout.write(job.script)
        return 0
    script_path = job.output_dir / f"{job.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    script_path.write_text(job.script)
    try:
        job_id = submit(script_path)
    except RuntimeError as error:
        print(f"seq2vae slurm submit: error: {error}", file=sys.stderr)
        return 1
    tasks = f" ({job.array_size} array tasks)" if job.array_size else ""
    print(f"seq2vae slurm submit: {script_path} -> job {job_id}{tasks}; logs in {job.output_dir}", file=sys.stderr)
    print(job_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
