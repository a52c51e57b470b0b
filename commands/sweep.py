"""`seq2vae sweep`: a sweep table's rows run one after another on this machine, for people without SLURM.

    seq2vae sweep configs/paper/grid.tsv --config configs/paper/base.yaml --output-root runs/paper [key=value ...]

The rows, their validation and their run directories (`<run_dir>/task-<i>`, or the row's own
`run_dir`) are exactly those of `seq2vae slurm submit --kind sweep` for the same table, so a study
can move between a laptop and a cluster. Each row trains (`seq2vae.train --resume auto`, under
torchrun when --nproc-per-node > 1), then is evaluated into RUN_DIR/eval.json by `seq2vae eval`
on the valid split of its data. Running the same command again skips finished rows (final
checkpoint and eval.json present) and resumes an interrupted one from its latest checkpoint. At the
end it prints a summary table and writes `seq2vae report` over every row into REPORT_DIR.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.saving import TAG_PREFIX, latest_checkpoint
from ..config import ConfigError
from ..distributed import free_port
from ..evaluation.study_report import write_report
from ..evaluation.study_runs import ReportError
from ..slurm.options import JobOptions, resolve_layout
from ..slurm.render import REQUEUE_EXIT_CODE, sweep_rows
from ..slurm.run_config import TRAINER_MODULE, check_config_file
from ..slurm.sweep import read_sweep_table
from ..train.config import load_train_config

EVAL_FILE = "eval.json"
DEFAULT_EVAL_ARGS = "--iw-samples 100"


@dataclass
class SweepRow:
    index: int
    overrides: list[str]  # the table's cells plus run_dir, as `key=value`
    run_dir: Path
    total_steps: int
    eval_data: str  # the shard directory whose valid split evaluates the row
    seed: int
    status: str = "pending"

    @property
    def eval_json(self) -> Path:
        return self.run_dir / EVAL_FILE


def plan_rows(config: Path, table: Path, overrides: list[str], world_size: int) -> list[SweepRow]:
    """Validates every row against the config (as the SLURM renderer does) and resolves its run directory.

    Raises ConfigError naming the table, row and key of a bad row.
    """
    layout = resolve_layout(JobOptions(device="cpu", ranks_per_node=world_size))
    rows = []
    for index, row in enumerate(sweep_rows(config, overrides, read_sweep_table(table), TRAINER_MODULE, layout, table)):
        resolved = load_train_config(config, overrides + row)
        rows.append(
            SweepRow(
                index=index,
                overrides=row,
                run_dir=Path(resolved.run_dir),
                total_steps=resolved.total_steps,
                eval_data=resolved.data.valid or resolved.data.train,
                seed=resolved.seed,
            )
        )
    return rows


def trained_steps(run_dir: Path) -> int:
    """The step of the run's latest complete checkpoint (0 when it has none)."""
    checkpoint = latest_checkpoint(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
    return int(checkpoint.name.removeprefix(TAG_PREFIX)) if checkpoint is not None else 0


def training_command(config: Path, row: SweepRow, overrides: list[str], nproc: int) -> list[str]:
    program = ["-m", TRAINER_MODULE, "--config", str(config), "--resume", "auto", *overrides, *row.overrides]
    if nproc == 1:
        return [sys.executable, *program]

    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    return [sys.executable, *launcher, *program]


def evaluation_command(row: SweepRow, eval_args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "seq2vae", "eval", "--model", str(row.run_dir), "--data", row.eval_data,
        "--split", "valid", "--seed", str(row.seed), "--output", str(row.eval_json), *eval_args,
    ]


def run_row(config: Path, row: SweepRow, overrides: list[str], nproc: int, eval_args: list[str]) -> str:
    """Trains (or resumes) and evaluates one row; returns its status for the summary."""
    done = trained_steps(row.run_dir)
    if done >= row.total_steps and row.eval_json.is_file():
        print(f"row {row.index}: already finished (step {done}/{row.total_steps}, {row.eval_json}); skipping", flush=True)
        return "skipped (finished)"
    if done < row.total_steps:
        verb = f"resuming from step {done}" if done else "training"
        print(f"row {row.index}: {verb} in {row.run_dir}: {' '.join(row.overrides)}", flush=True)
        code = subprocess.call(training_command(config, row, overrides, nproc))
        done = trained_steps(row.run_dir)
        if code == REQUEUE_EXIT_CODE:  # saved on a stop signal: the next run resumes it
            return f"preempted at step {done}"
        if code != 0:
            return f"failed (training exit {code})"
        if done < row.total_steps:  # stopped on purpose (stop_at_step) or by a signal: resumable
            return f"stopped at step {done}"
    print(f"row {row.index}: evaluating {row.run_dir} on the valid split of {row.eval_data}", flush=True)
    partial = row.eval_json.with_suffix(".json.tmp")
    command = evaluation_command(row, eval_args)
    command[command.index(str(row.eval_json))] = str(partial)  # eval.json appears only when complete
    code = subprocess.call(command)
    if code != 0 or not partial.is_file():
        return f"failed (evaluation exit {code})"
    partial.replace(row.eval_json)
    return "finished"


def _summary_value(row: SweepRow, key: str) -> str:
    if not row.eval_json.is_file():
        return "-"
    value = json.loads(row.eval_json.read_text()).get("metrics", {}).get(key)
    return "-" if value is None else (str(value) if isinstance(value, int) else f"{value:.2f}")


def format_summary(rows: list[SweepRow]) -> str:
    header = ("row", "status", "steps", "KL", "AU", "MI", "IW-NLL", "run_dir")
    table = [header] + [
        (
            str(row.index), row.status, f"{trained_steps(row.run_dir)}/{row.total_steps}",
            _summary_value(row, "kl"), _summary_value(row, "active_units"), _summary_value(row, "mi_dataset"),
            _summary_value(row, "iw_nll"), str(row.run_dir),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2vae sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("table", metavar="TABLE.tsv", help="sweep table: a header of config keys, one row per run")
    parser.add_argument("--config", required=True, help="training config every row starts from")
    parser.add_argument("--output-root", help="parent of the rows' run directories (sets run_dir; rows run in task-<i>)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="ranks per row (torchrun when > 1; default 1)")
    parser.add_argument(
        "--eval-args", default=DEFAULT_EVAL_ARGS, help="extra `seq2vae eval` arguments (default: %(default)r)"
    )
    parser.add_argument("--report-dir", help="where the report goes (default: <run_dir or --output-root>/report)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every row")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # options may follow the table and the overrides
    overrides = list(args.overrides) + ([f"run_dir={args.output_root}"] if args.output_root else [])
    if args.nproc_per_node < 1:
        raise ConfigError("--nproc-per-node must be >= 1")
    config = check_config_file(args.config)
    rows = plan_rows(config, Path(args.table), overrides, args.nproc_per_node)
    base_run_dir = Path(load_train_config(config, overrides).run_dir)
    eval_args = shlex.split(args.eval_args)
    print(f"sweep: {len(rows)} rows of {args.table} from {config}", flush=True)
    for row in rows:
        row.status = run_row(config, row, overrides, args.nproc_per_node, eval_args)
    print("\n" + format_summary(rows), flush=True)

    reportable = [row.run_dir for row in rows if row.eval_json.is_file() or (row.run_dir / "metrics.jsonl").is_file()]
    if reportable:
        try:
            report = write_report(reportable, Path(args.report_dir) if args.report_dir else base_run_dir / "report")
            print(f"report: {report}")
        except ReportError as error:
            print(f"seq2vae sweep: no report: {error}", file=sys.stderr)
    unfinished = [row.index for row in rows if row.status not in ("finished", "skipped (finished)")]
    if unfinished:
        print(f"rows {unfinished} are not finished; run the same command again to resume them", file=sys.stderr)
        return 1
    return 0
