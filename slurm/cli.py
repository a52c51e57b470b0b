"""`seq2vae slurm render|submit`: an sbatch script from a training config and cluster options.

    seq2vae slurm render --config run.yaml --nodes 2 --gpus-per-node 8 --time 1-00:00:00 optim.lr=3e-4 > job.sbatch
    seq2vae slurm submit --config run.yaml --kind sweep --sweep lrs.tsv --partition gpu

A sweep whose rows start from other rows' weights (`model.init_from={run_dir}/task-N`) is one array
per wave, each submitted after the waves it starts from (`--dependency=afterok`, seq2vae.slurm.waves);
`render` prints one script per wave. The job options are the fields of `seq2vae.slurm.options.JobOptions` (`--help` lists them).
"""

from __future__ import annotations

import argparse
import sys
import time

from ..config import add_flags, from_flags
from .cluster import SubmitError, submit
from .options import JobOptions
from .render import JOB_KINDS, RenderedJob, render_job, render_sweep
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


def _render(args: argparse.Namespace) -> list[RenderedJob]:
    """The jobs to submit, in order: one, or a sweep's arrays one per wave."""
    options = from_flags(JobOptions, args)
    overrides = list(args.overrides)
    if args.kind != "eval":
        # Jobs run with HF_HUB_OFFLINE=1: hub names become local snapshots here, once (downloaded if needed).
        overrides += offline_overrides(args.config, overrides, options.module)
    if args.kind == "sweep" and args.sweep is not None:
        jobs = render_sweep(args.config, overrides, options, sweep_table=args.sweep)
    else:
        jobs = [render_job(args.kind, args.config, overrides, options, sweep_table=args.sweep)]
    # sbatch does not create the log directory; a job whose log cannot be opened fails without a word.
    jobs[0].output_dir.mkdir(parents=True, exist_ok=True)
    return jobs


def _submit_all(jobs: list[RenderedJob]) -> list[str]:
    """sbatch each job in order; a wave waits (afterok) for the jobs of the waves its rows start from."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    job_ids: list[str] = []
    for job in jobs:
        wave = job.wave if job.wave is not None and job.wave.count > 1 else None
        suffix = f"-wave{wave.index + 1}" if wave else ""
        script_path = job.output_dir / f"{job.job_name}-{stamp}{suffix}.sbatch"
        script_path.write_text(job.script)
        dependency = "afterok:" + ":".join(job_ids[w] for w in wave.after) if wave and wave.after else None
        try:
            job_id = submit(script_path, dependency)  # SubmitError: one line, exit 2 (the script stays saved)
        except SubmitError as error:
            if not job_ids:
                raise
            raise SubmitError(f"{error}; the earlier waves were submitted as jobs {', '.join(job_ids)}: scancel them, "
                              "or sbatch the remaining scripts by hand with --dependency=afterok:<their ids>") from None
        job_ids.append(job_id)
        tasks = f" ({job.array_size} array tasks)" if job.array_size else ""
        waits = f", wave {wave.index + 1} of {wave.count}" + (f", after {dependency}" if dependency else "") if wave else ""
        print(f"seq2vae slurm submit: {script_path} -> job {job_id}{tasks}{waits}; logs in {job.output_dir}", file=sys.stderr)
    return job_ids


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    jobs = _render(args)  # a ConfigError is the user's: cli.main prints it in one line, exit 2
    if args.command == "render":
        if len(jobs) > 1:
            print(f"seq2vae slurm render: {args.sweep} runs as {len(jobs)} arrays, one per wave (rows that start from "
                  "other rows' weights wait for them); their scripts follow in order, and `seq2vae slurm submit` "
                  "submits each with --dependency=afterok on the waves it starts from", file=sys.stderr)
        sys.stdout.write("\n".join(job.script for job in jobs))
        return 0
    print("\n".join(_submit_all(jobs)))  # one job id per line, in submission order
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
