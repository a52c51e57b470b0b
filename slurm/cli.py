"""`seq2vae slurm render|submit`: an sbatch script from a training config and cluster options.

    seq2vae slurm render --config run.yaml --nodes 2 --gpus-per-node 8 --time 1-00:00:00 optim.lr=3e-4 > job.sbatch
    seq2vae slurm submit --config run.yaml --kind sweep --sweep lrs.tsv --partition gpu

The job options are the fields of `seq2vae.slurm.options.JobOptions` (`--help` lists them).
"""

from __future__ import annotations

import argparse
import sys
import time

from ..config import add_flags, from_flags
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
        command.add_argument("--sweep", metavar="TABLE.tsv",
                             help="sweep table, one row of overrides per array task (--kind sweep)")
        add_flags(command, JobOptions, _FLAG_NAMES)
        command.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every task")
    return parser


def _render(args: argparse.Namespace) -> RenderedJob:
    options = from_flags(JobOptions, args)
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
    job = _render(args)  # a ConfigError is the user's: cli.main prints it in one line, exit 2
    if args.command == "render":
        sys.stdout.write(job.script)
        return 0
    script_path = job.output_dir / f"{job.job_name}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    script_path.write_text(job.script)
    job_id = submit(script_path)  # SubmitError: one line, exit 2 (the script stays saved for a retry)
    tasks = f" ({job.array_size} array tasks)" if job.array_size else ""
    print(f"seq2vae slurm submit: {script_path} -> job {job_id}{tasks}; logs in {job.output_dir}", file=sys.stderr)
    print(job_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
