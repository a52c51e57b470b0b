"""Renders an sbatch script from a template, a config, `key=value` overrides and `JobOptions`.

Templates live in `seq2vae/slurm/templates/` (`train`, `sweep`, `eval`, plus the shared
`_launch` fragment) and use `{{name}}` placeholders; every placeholder must be filled and every
value used, so a template and this module cannot drift apart silently.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from ..config import ConfigError
from .cluster import check_partition_has_gpus
from .job_environment import job_environment_lines
from .options import JobOptions, Layout, resolve_layout, resolve_resources
from .run_config import TRAINER_MODULE, check_config_file, read_run_facts
from .signal_lead import SignalLead, signal_lead
from .sweep import read_sweep_table
from .waves import SweepWave, array_spec, init_from_sources, row_value, sweep_waves

JobKind = Literal["train", "eval", "sweep"]
JOB_KINDS: tuple[str, ...] = ("train", "eval", "sweep")

# The trainer's exit code after saving on a stop signal (seq2vae.train.signals.REQUEUE_EXIT_CODE);
# repeated here so rendering never imports the training stack.
REQUEUE_EXIT_CODE = 75

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class RenderedJob:
    """A rendered script and what it will do."""

    kind: str
    script: str
    job_name: str
    output_dir: Path
    array_size: int | None  # tasks of a sweep's job array; None for single jobs
    wave: SweepWave | None = None  # a sweep's wave: its rows and the waves it waits for (afterok)


def render_job(
    kind: str,
    config: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    options: JobOptions | None = None,
    sweep_table: str | Path | None = None,
    wave: int | None = None,
) -> RenderedJob:
    """Checks the request and fills the template of `kind` ('train', 'eval' or 'sweep').

    `wave`: for a sweep whose rows start from other rows' weights (`waves.py`), which wave's array to
    render; `render_sweep` renders them all. Raises ConfigError (a ValueError) with a message naming
    the option, file or key for an impossible request: missing config, GPUs on a CPU-only job or
    partition, a global batch that does not divide by micro batch x world size, a bad sweep table,
    a sweep of several waves rendered as one array.
    """
    options = options or JobOptions()
    overrides = list(overrides)
    if kind not in JOB_KINDS:
        raise ConfigError(f"unknown job kind {kind!r}; valid kinds: {', '.join(JOB_KINDS)}")
    if (kind == "sweep") != (sweep_table is not None):
        raise ConfigError("--sweep TABLE.tsv is required for --kind sweep, and only for it")
    config_path = check_config_file(config)
    layout = resolve_layout(options)
    if layout.gpus_per_node > 0 and options.check_partition:
        check_partition_has_gpus(options.partition)
    module = options.module or TRAINER_MODULE

    rows: list[list[str]] = []
    selected: list[int] = []  # the rows of this job's array
    sweep_wave: SweepWave | None = None
    kind_values: dict[str, str] = {}
    planned_save_seconds: float | None = None
    run_dirs: list[str] = []
    if kind == "train":
        run_dirs = [read_run_facts(config_path, overrides, module, layout.world_size).run_dir]
        if module == TRAINER_MODULE and layout.gpus_per_node > 0:
            from .job_check import refuse_if_it_cannot_fit

            planned_save_seconds = refuse_if_it_cannot_fit(
                config_path, overrides, layout.nodes, layout.gpus_per_node, options.mem
            )
    elif kind == "sweep":
        rows = sweep_rows(config_path, overrides, read_sweep_table(sweep_table), module, layout, sweep_table)
        waves = sweep_waves(init_from_sources(rows, sweep_table))
        if wave is None and len(waves) > 1:
            raise ConfigError(
                f"sweep table '{sweep_table}': rows {', '.join(map(str, waves[1].rows))} start from other rows' "
                f"weights, so it runs as {len(waves)} dependent arrays: render it with render_sweep"
            )
        if wave is not None and not 0 <= wave < len(waves):
            raise ConfigError(f"sweep table '{sweep_table}' has {len(waves)} waves, not a wave {wave}")
        sweep_wave = waves[wave or 0]
        selected = list(sweep_wave.rows)
        run_dirs = [row_value(rows[i], "run_dir") for i in selected]
        kind_values["sweep_table"] = str(Path(sweep_table).resolve())
        kind_values["sweep_rows"] = "\n".join(f"    {i}) ROW=({_bash_words(rows[i])}) ;;" for i in selected)
    else:
        kind_values.update(_eval_values(config_path, overrides, options))

    job_name = options.job_name or f"seq2vae-{kind}-{config_path.stem}"
    output_dir = Path(options.output_dir).resolve()
    workdir = Path(options.workdir).resolve() if options.workdir else Path.cwd()
    lead = _warning_lead(kind, options, run_dirs, workdir, planned_save_seconds)
    array = array_spec(selected) if selected else None
    values = {
        "sbatch": "\n".join(_sbatch_lines(kind, options, layout, job_name, output_dir, workdir, array, lead, sweep_wave)),
        "launch": _launch_fragment(layout, options, output_dir),
        "setup": _setup_lines(options),
        "config": str(config_path),
        **kind_values,
    }
    if kind != "eval":
        values.update(
            config_quoted=shlex.quote(str(config_path)), overrides=_bash_words(overrides), program=_bash_words(["-m", module])
        )
    return RenderedJob(kind, _fill(_template(kind), values), job_name, output_dir, len(selected) or None, sweep_wave)


def render_sweep(
    config: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    options: JobOptions | None = None,
    sweep_table: str | Path | None = None,
) -> list[RenderedJob]:
    """A sweep's arrays, one per wave in submission order (one job when no row starts from another row).

    `seq2vae slurm submit` submits wave k with `--dependency=afterok:` on the jobs of `job.wave.after`.
    """
    options = options or JobOptions()
    first = render_job("sweep", config, overrides, options, sweep_table, wave=0)
    assert first.wave is not None
    return [first] + [render_job("sweep", config, overrides, options, sweep_table, wave=k) for k in range(1, first.wave.count)]


def _warning_lead(kind: str, options: JobOptions, run_dirs: list[str], workdir: Path,
                  planned_save_seconds: float | None) -> SignalLead | None:
    """The USR1 warning of a train or sweep job: explicit, or derived from the slowest task's last save."""
    if kind == "eval" or options.signal_seconds == 0:
        return None
    if options.signal_seconds is not None:
        return SignalLead(options.signal_seconds, "--signal-seconds")
    # Relative run directories are the job's, which runs in `workdir`.
    leads = [signal_lead(workdir / run_dir, planned_save_seconds) for run_dir in run_dirs if run_dir] or [
        signal_lead(None, planned_save_seconds)
    ]
    return max(leads, key=lambda lead: lead.seconds)


def _launch_fragment(layout: Layout, options: JobOptions, output_dir: Path) -> str:
    values = {
        "ranks_per_node": str(layout.ranks_per_node),
        "max_restarts": str(options.max_restarts),
        "requeue_on_failure": str(options.requeue_on_failure),
        "requeue_exit_code": str(REQUEUE_EXIT_CODE),
        "log_dir": shlex.quote(str(output_dir)),
        "job_environment": "\n".join(job_environment_lines(layout)),
        "torch_extensions_dir": _one_line(options.torch_extensions_dir, "--torch-extensions-dir"),
    }
    return _fill(_template("_launch"), values).rstrip("\n")


def _setup_lines(options: JobOptions) -> str:
    lines = [_one_line(line, "--setup") for line in options.setup_lines]
    if options.device == "cpu":
        lines.append("export DS_ACCELERATOR=cpu  # DeepSpeed on CPU; torch.distributed uses gloo")
    return "\n".join(lines)


def _eval_values(config_path: Path, overrides: list[str], options: JobOptions) -> dict[str, str]:
    """`seq2vae eval` on the run directory of the training config, valid split of its data."""
    facts = read_run_facts(config_path, overrides, TRAINER_MODULE, world_size=1)
    eval_args = shlex.split(options.eval_args or "")
    if options.device == "cpu":
        eval_args += ["--device", "cpu"]
    return {
        "run_dir": shlex.quote(facts.run_dir),
        "data": shlex.quote(facts.data_valid or facts.data_train or ""),
        "eval_args": _bash_words(eval_args),
    }


RUN_DIR_PLACEHOLDER = "{run_dir}"


def sweep_rows(
    config_path: Path,
    overrides: list[str],
    table_rows: list[list[str]],
    module: str,
    layout: Layout,
    table: str | Path,
) -> list[list[str]]:
    """Validates each row against the config and gives every task its own run directory.

    A row without `run_dir` runs in `<run_dir>/task-<i>`; explicit run directories must differ.
    `{run_dir}` in a cell is the sweep's own run_dir, so a row can name another row's run directory
    (`model.init_from={run_dir}/task-0`: phase 2 from a phase-1 row, configs/paper/grid.tsv).
    """
    rows: list[list[str]] = []
    run_dirs: dict[str, int] = {}
    sweep_run_dir: str | None = None
    for index, row in enumerate(table_rows):
        if any(RUN_DIR_PLACEHOLDER in item for item in row):
            if sweep_run_dir is None:
                sweep_run_dir = read_run_facts(config_path, overrides, module, layout.world_size).run_dir or "runs"
            row = [item.replace(RUN_DIR_PLACEHOLDER, sweep_run_dir) for item in row]
        try:
            facts = read_run_facts(config_path, overrides + row, module, layout.world_size)
        except ConfigError as error:
            raise ConfigError(f"sweep table '{table}', row {index}: {error}") from None
        if not any(item.startswith("run_dir=") for item in row):
            run_dir = str(Path(facts.run_dir or "runs") / f"task-{index}")
            row = row + [f"run_dir={run_dir}"]
        else:
            run_dir = facts.run_dir
        if run_dir in run_dirs:
            raise ConfigError(
                f"sweep table '{table}': rows {run_dirs[run_dir]} and {index} share run_dir {run_dir!r}; "
                "each task needs its own (it resumes from it)"
            )
        run_dirs[run_dir] = index
        rows.append(row)
    init_from_sources(rows, table)  # a row that starts from another row's weights must come after it
    return rows


def _sbatch_lines(
    kind: str,
    options: JobOptions,
    layout: Layout,
    job_name: str,
    output_dir: Path,
    workdir: Path,
    array: str | None,
    lead: SignalLead | None,
    wave: SweepWave | None = None,
) -> list[str]:
    log_name = "%x-%A_%a.out" if kind == "sweep" else "%x-%j.out"
    resources = resolve_resources(options, layout)
    pairs: list[tuple[str, object]] = [
        ("job-name", job_name),
        ("nodes", layout.nodes),
        # One task per node hosts torchrun, which starts that node's ranks (never one task per GPU).
        ("ntasks-per-node", 1),
        ("gpus-per-node", layout.gpus_per_node or None),
        ("cpus-per-task", resources.cpus_per_task),
        ("mem", resources.mem),
        ("exclusive", "" if resources.exclusive else None),
        ("partition", options.partition),
        ("account", options.account),
        ("qos", options.qos),
        ("time", options.time),
        ("constraint", options.constraint),
        ("chdir", workdir),
        ("output", output_dir / log_name),
        # Requeued runs append to the same log.
        ("open-mode", "append"),
    ]
    if kind != "eval":
        # B: only the batch script is warned; it forwards the signal to the ranks itself. Without it the
        # job saves on SLURM's TERM at the limit (the script traps both).
        if lead is not None:
            pairs.append(("signal", f"B:USR1@{lead.seconds}"))
        pairs.append(("requeue", ""))
    elif options.requeue_on_failure:
        pairs.append(("requeue", ""))  # a failed evaluation runs again
    if array:
        # Task ids are the table's row indices, whichever wave the array is: task-<i> directories and logs.
        limit = f"%{options.max_parallel}" if options.max_parallel else ""
        pairs.append(("array", f"{array}{limit}"))
    lines = []
    for name, value in pairs:
        if value is None:
            continue
        text = str(value)
        if any(c.isspace() for c in text):
            raise ConfigError(f"--{name} {text!r}: whitespace is not allowed in an #SBATCH value")
        lines.append(f"#SBATCH --{name}={text}" if text else f"#SBATCH --{name}")
    lines += [_extra_sbatch_line(line) for line in options.sbatch_lines]
    if kind != "eval":
        lines.append(f"# warning lead: {f'{lead.seconds} s, {lead.reason}' if lead else 'none (TERM at the time limit only)'}")
    if wave is not None and wave.count > 1:
        waits = (f"submitted with --dependency=afterok on the job(s) of wave(s) {', '.join(str(w + 1) for w in wave.after)}"
                 if wave.after else "the rows the later waves start from")
        lines.append(f"# wave {wave.index + 1} of {wave.count} (rows {array}): {waits}")
    return lines


def _extra_sbatch_line(line: str) -> str:
    """'exclusive', '--exclusive' or '#SBATCH --exclusive' -> '#SBATCH --exclusive'.

    The bare form exists because argparse takes `--sbatch-line --exclusive` for two flags.
    """
    text = _one_line(line, "--sbatch-line").strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    if not text.startswith("-"):
        text = "--" + text
    if not re.match(r"^--?[A-Za-z]", text):
        raise ConfigError(f"--sbatch-line {line!r}: expected an sbatch option such as 'exclusive' or '--mail-type=END'")
    return f"#SBATCH {text}"


def _one_line(text: str, option: str) -> str:
    if "\n" in text or "\r" in text:
        raise ConfigError(f"{option} {text!r}: one line per option, please (repeat the option for more)")
    return text


def _bash_words(words: list[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


def _template(name: str) -> str:
    return (resources.files("seq2vae.slurm") / "templates" / f"{name}.sbatch").read_text()


def _fill(template: str, values: dict[str, str]) -> str:
    """Replaces each {{name}}; a placeholder without a value, or a value without a placeholder, is a bug."""
    names = set(_PLACEHOLDER.findall(template))
    missing, unused = names - set(values), set(values) - names
    assert not missing and not unused, f"template/renderer mismatch: missing {missing}, unused {unused}"
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)
