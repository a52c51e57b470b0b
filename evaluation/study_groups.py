"""Runs of one setting grouped across seeds, with mean and 95% interval per metric (`seq2vae report`).

Two runs belong to one group when their run configs are equal in every varied setting except the
seed-like ones (`seed`, any `*_seed`): a study's repeats of one recipe. Runs whose whole training
config is unknown (an eval JSON of an exported model: only its `model.*` settings) are never grouped,
since equal model settings say nothing about how they were trained. Per metric a group reports n, the
mean and the Student-t interval (`evaluation.intervals`); a flag (`mi_saturated`) is counted, and the
MI it qualifies is marked, so a mean of MIs at their ceiling log N is never read as a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from .intervals import MeanInterval, mean_interval
from .study_runs import StudyRun

# Report columns that describe the evaluation rather than measure the model: one value per group.
SETTING_LIKE_METRICS = ("iw_samples", "latent_dim")
# Boolean metrics: a group counts the runs where they hold.
FLAG_METRICS = ("mi_saturated",)
# metric -> the flag saying its value sits at its estimator's ceiling (evaluation/diagnostics.py).
SATURATION_FLAGS = {"mi_dataset": "mi_saturated"}
# The settings that aim the rate: runs differing only in these (and seeds) form one rate sweep.
RATE_KNOBS = ("target_kl", "free_bits")


def is_seed_setting(key: str) -> bool:
    """`seed`, `data.seed`, `eval.shuffle_seed`, ...: repeats of a recipe, never a different recipe."""
    last = key.split(".")[-1]
    return last == "seed" or last.endswith("_seed")


def is_rate_setting(key: str) -> bool:
    return key.split(".")[-1] in RATE_KNOBS


def format_value(value: Any) -> str:
    """A report cell: '-' for missing, 2 decimals (3 significant digits for very large or small values)."""
    if value is None:
        return "-"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-2) else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def short_key(key: str) -> str:
    """A setting by its last two key parts ('phases.1.free_bits' -> '1.free_bits')."""
    return ".".join(key.split(".")[-2:])


@dataclass
class RunGroup:
    settings: dict[str, Any]  # the grouped settings' values (seed-like keys left out)
    rows: list[dict[str, Any]]  # the members' report rows (study_report.report_rows), in input order
    config_known: bool  # False for a run that stands alone because its training config is unknown

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def runs(self) -> list[str]:
        return [row["run"] for row in self.rows]

    def interval(self, key: str) -> MeanInterval | None:
        """Mean and 95% interval of the members' numeric values of `key` (missing values left out)."""
        values = [row.get(key) for row in self.rows]
        return mean_interval([float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)])

    def flagged(self, key: str) -> int:
        """How many members have the flag `key` set (validation records store it as 1.0)."""
        return sum(1 for row in self.rows if row.get(key))

    def constant(self, key: str) -> Any:
        values = {json.dumps(row.get(key)) for row in self.rows}
        return self.rows[0].get(key) if len(values) == 1 else "mixed"

    def label(self, keys: list[str]) -> str:
        """The group's values of `keys` ('1.free_bits=0.5, ...'), or its runs' names when it has none."""
        shown = ", ".join(f"{short_key(key)}={format_value(self.settings.get(key))}" for key in keys)
        return shown or ", ".join(self.runs)


def grouping_settings(settings: list[str]) -> list[str]:
    """The varied settings that tell groups apart: all but the seed-like ones."""
    return [key for key in settings if not is_seed_setting(key)]


def group_runs(runs: list[StudyRun], rows: list[dict[str, Any]], settings: list[str]) -> list[RunGroup]:
    """Groups `rows` (one per run, same order) by their values of `settings`; groups in first-seen order."""
    groups: dict[tuple, RunGroup] = {}
    for run, row in zip(runs, rows):
        values = {key: run.settings.get(key) for key in settings}
        key = tuple(json.dumps(values[k], sort_keys=True) for k in settings) if run.config_known else ("alone", run.name)
        groups.setdefault(key, RunGroup(values, [], run.config_known)).rows.append(row)
    return list(groups.values())


def has_repeats(groups: list[RunGroup]) -> bool:
    return any(group.n > 1 for group in groups)


def rate_sweeps(groups: list[RunGroup], settings: list[str]) -> list[tuple[str, list[RunGroup]]]:
    """(label, groups) per rate sweep: groups equal in every non-rate setting, labelled by those settings."""
    others = [key for key in settings if not is_rate_setting(key)]
    knobs = ", ".join(short_key(key) for key in settings if is_rate_setting(key))
    sweeps: dict[tuple, list[RunGroup]] = {}
    for index, group in enumerate(groups):
        key = tuple(json.dumps(group.settings.get(k), sort_keys=True) for k in others) if group.config_known else (index,)
        sweeps.setdefault(key, []).append(group)
    return [
        (f"{knobs} sweep" if len(members) > 1 and not others else members[0].label(others), members)
        for members in sweeps.values()
    ]


def _metric_csv_columns(key: str) -> list[str]:
    if key in SETTING_LIKE_METRICS:
        return [key]
    if key in FLAG_METRICS:
        return [f"{key}_runs"]
    columns = [f"{key}_mean", f"{key}_low", f"{key}_high", f"{key}_n"]
    return columns + ([f"{key}_saturated_runs"] if key in SATURATION_FLAGS else [])


def group_csv(groups: list[RunGroup], settings: list[str], metric_keys: list[str]) -> tuple[list[str], list[dict]]:
    """(columns, rows) of report_groups.csv: settings, n, per metric _mean/_low/_high/_n, the runs."""
    columns = ["group", *settings, "n", *(c for key in metric_keys for c in _metric_csv_columns(key)), "runs", "metrics_from"]
    table = []
    for index, group in enumerate(groups):
        row: dict[str, Any] = {"group": index, **group.settings, "n": group.n, "runs": " ".join(group.runs),
                               "metrics_from": " ".join(sorted({str(r.get("metrics_from")) for r in group.rows}))}
        for key in metric_keys:
            if key in SETTING_LIKE_METRICS:
                row[key] = group.constant(key)
            elif key in FLAG_METRICS:
                row[f"{key}_runs"] = group.flagged(key)
            else:
                interval = group.interval(key)
                if interval is not None:
                    row.update({f"{key}_mean": interval.mean, f"{key}_low": interval.low,
                                f"{key}_high": interval.high, f"{key}_n": interval.n})
                if key in SATURATION_FLAGS:
                    row[f"{key}_saturated_runs"] = group.flagged(SATURATION_FLAGS[key])
        table.append(row)
    return columns, table


def group_cell(group: RunGroup, key: str, fmt: Callable[[Any], str] = format_value) -> str:
    """A markdown cell: 'mean ± half-width' (n stated when fewer members have the metric), a count for
    a flag, one value for an evaluation setting; a saturated MI says 'saturated k/n'."""
    if key in SETTING_LIKE_METRICS:
        return fmt(group.constant(key))
    if key in FLAG_METRICS:
        return f"{group.flagged(key)}/{group.n}"
    interval = group.interval(key)
    if interval is None:
        return "-"
    cell = fmt(interval.mean) if interval.half_width is None else f"{fmt(interval.mean)} ± {fmt(interval.half_width)}"
    if interval.n != group.n:
        cell += f" (n={interval.n})"
    flag = SATURATION_FLAGS.get(key)
    if flag is not None and group.flagged(flag):
        cell += f" (saturated {group.flagged(flag)}/{group.n})"
    return cell


def group_markdown_table(groups: list[RunGroup], settings: list[str], metric_keys: list[str],
                         headers: dict[str, str]) -> list[str]:
    """The grouped table's markdown lines: settings, n, one 'mean ± half-width' cell per metric, runs."""
    titles = [*settings, "n", *(headers.get(key, key) for key in metric_keys), "runs"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for group in groups:
        cells = [format_value(group.settings.get(key)) for key in settings]
        cells += [str(group.n), *(group_cell(group, key) for key in metric_keys), ", ".join(group.runs)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
