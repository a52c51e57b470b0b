"""`seq2vae report`: one page (markdown + CSV + PNG figures) comparing the runs of a study.

    seq2vae report runs/paper/task-* --output runs/paper/report
    seq2vae report a/eval.json b/eval.json --output report/

Writes OUTPUT/report.md (the page, figures embedded), OUTPUT/report.csv (one row per run: the
settings that differ between runs, then recon, KL, -ELBO, IW-NLL, perplexities, MI, AU, BLEU and
probe accuracies) and the PNGs. Inputs are run directories or `seq2vae eval` JSON files
(`seq2vae.evaluation.study_runs` says what is read from each). `write_report` is the same as a function.

Seeds: runs whose configs differ only in `seed` (or another seed-like key) are repeats of one setting
(`evaluation/study_groups.py`). When some setting has repeats, the page opens with one row per setting:
n and, per metric, the mean +- the half-width of its 95% Student-t interval (n - 1 degrees of freedom);
an MI flagged at its ceiling log N says "saturated k/n". OUTPUT/report_groups.csv holds the same with
<metric>_mean, _low, _high and _n columns. The per-run table follows. Without repeats the page is per run only.

Rate-distortion: when the runs differ in rate, rate_distortion.png draws recon NLL against KL per
setting (interval bars over seeds), a line through each rate sweep (settings equal but for
`target_kl` / `free_bits`) in KL order, and the -ELBO iso-lines recon + KL = const.
"""

from __future__ import annotations

import argparse
import csv
import datetime
from pathlib import Path
from typing import Any

from .diagnostics import MI_SATURATION_MARGIN
from .report import format_comparison
from .study_groups import (
    RunGroup,
    format_value,
    group_csv,
    group_markdown_table,
    group_runs,
    grouping_settings,
    has_repeats,
    short_key,
)
from .study_runs import StudyRun, load_runs, varied_settings

# Metric columns after the settings: (CSV column = key in the eval JSON's metrics, markdown header).
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("recon_nll", "recon"),
    ("kl", "KL"),
    ("neg_elbo", "-ELBO"),
    ("iw_nll", "IW-NLL"),
    ("iw_samples", "K"),
    ("ppl_elbo_per_token", "PPL/tok (ELBO)"),
    ("ppl_iw_per_token", "PPL/tok (IW)"),
    ("ppl_elbo_per_word", "PPL/word (ELBO)"),
    ("ppl_iw_per_word", "PPL/word (IW)"),
    ("mi_dataset", "MI (set)"),
    ("mi_mini_batch", "MI (batch)"),
    ("active_units", "AU"),
    ("latent_dim", "Z"),
    ("bleu", "BLEU"),
    # evaluation/diagnostics.py: the numbers that tell a VAE from an autoencoder (docs/diagnostics.md).
    ("mi_saturated", "MI at log N"),
    ("mi_upper_bound", "MI <="),
    ("prior_mismatch_gaussian", "mismatch >="),  # KL(q(z) || p); no "|" inside a markdown cell
    ("reliance_gain_vs_other_z", "reliance (nats)"),
    ("free_bits_share_below", "below free bits"),
    ("true_nll", "true NLL"),  # synthetic data: the exact mean -log p(x), the floor of every bound above
    ("iw_nll_gap_to_true_nll", "IW-NLL - true NLL"),
    ("prior_standard_normal_grammatical", "grammatical N(0,I)"),
    ("prior_gmm_grammatical", "grammatical GMM"),
)


def _metric_values(run: StudyRun) -> dict[str, Any]:
    metrics = run.metrics
    values = {key: metrics.get(key) for key, _ in METRIC_COLUMNS}
    values["iw_samples"] = run.iw_samples
    values["bleu"] = (run.result or {}).get("reconstruction", {}).get("bleu")
    for factor, probe in sorted((run.result or {}).get("probes", {}).get("factors", {}).items()):
        values[f"probe_{factor}"] = probe.get("accuracy")
        values[f"probe_{factor}_majority"] = probe.get("majority_baseline")
    values["metrics_from"] = run.metrics_from
    return values


def report_rows(runs: list[StudyRun]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, one dict per run): run, the varied settings, the metrics, probe accuracies, source."""
    settings = varied_settings(runs)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name}
        row.update({key: run.settings.get(key) for key in settings})
        row.update(_metric_values(run))
        row["source"] = str(run.source)
        rows.append(row)
    probe_columns = sorted({key for row in rows for key in row if key.startswith("probe_")})
    columns = ["run", *settings, *(key for key, _ in METRIC_COLUMNS), *probe_columns, "metrics_from", "source"]
    return columns, rows


def _setting_label(run: StudyRun, settings: list[str]) -> str:
    """The run's name and its first varied settings by their last two key parts ('task-3: 1.free_bits=3')."""
    shown = ", ".join(f"{short_key(key)}={format_value(run.settings.get(key))}" for key in settings[:3])
    return f"{run.name}: {shown}" if shown else run.name


def write_csv(columns: list[str], rows: list[dict[str, Any]], path: Path) -> Path:
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{key: ("" if row.get(key) is None else row.get(key)) for key in columns} for row in rows])
    return path


def _markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    headers = dict(METRIC_COLUMNS)
    shown = [column for column in columns if column not in ("source", "metrics_from") and not column.endswith("_majority")]
    lines = [
        "| " + " | ".join(headers.get(column, column) for column in shown) + " |",
        "|" + "---|" * len(shown),
    ]
    lines += ["| " + " | ".join(format_value(row.get(column)) for column in shown) + " |" for row in rows]
    return lines


def _group_section(groups: list[RunGroup], settings: list[str], columns: list[str], output: Path) -> list[str]:
    """The grouped table (one row per setting, mean ± 95% interval over its seeds) and report_groups.csv."""
    shown_settings = grouping_settings(settings)
    metric_keys = [column for column in columns if column not in ("run", *settings, "metrics_from", "source")]
    group_columns, group_rows = group_csv(groups, shown_settings, metric_keys)
    csv_path = write_csv(group_columns, group_rows, output / "report_groups.csv")
    seeds = ", ".join(f"`{key}`" for key in settings if key not in shown_settings)
    same = f"differ only in {seeds}" if seeds else "are equal"
    return [
        "## Settings over seeds (mean ± 95% interval)",
        "",
        f"Runs whose configs {same} are one setting. Each cell is the mean over the setting's "
        "n runs ± the half-width of the 95% Student-t interval (n - 1 degrees of freedom); n = 1 has no "
        f"interval. 'saturated k/n': k of the runs' MI sits within {MI_SATURATION_MARGIN} nats of its ceiling log N, so the "
        "mean says only 'at least about log N' (read the MI upper bound and the mismatch instead). "
        f"Means, bounds and n per metric: [{csv_path.name}]({csv_path.name}).",
        "",
        *group_markdown_table(groups, shown_settings, [key for key in metric_keys if not key.endswith("_majority")],
                              dict(METRIC_COLUMNS)),
        "",
    ]


def _figures(runs: list[StudyRun], settings: list[str], groups: list[RunGroup], output: Path) -> list[tuple[str, Path]]:
    """(section title, PNG path) for every figure that had data."""
    from . import study_figures as figures

    made = [
        ("Rate and distortion (recon NLL against KL)",
         figures.rate_distortion(groups, grouping_settings(settings), output / "rate_distortion.png")),
        ("Training curves (reconstruction, KL, beta)", figures.training_curves(runs, output / "training_curves.png")),
        ("KL per latent dimension", figures.kl_per_dimension(runs, output / "kl_per_dimension.png")),
        (
            "MI, active units and IW-NLL against the varied settings",
            figures.metrics_by_setting(runs, [_setting_label(run, settings) for run in runs], output / "metrics_by_setting.png"),
        ),
    ]
    for index, run in enumerate(runs):
        made.append((f"Posterior means of {run.name} (PCA)", figures.latent_pca(run, output / f"pca_{index:02d}.png")))
    return [(title, path) for title, path in made if path is not None]


def write_report(inputs: list[Path], output: Path) -> Path:
    """Writes report.md, report.csv and the figures for `inputs` into `output`; returns report.md's path.

    Raises ReportError (a ValueError) naming the path of an input that is missing or holds no metrics.
    """
    runs = load_runs(list(inputs))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    columns, rows = report_rows(runs)
    settings = varied_settings(runs)
    csv_path = write_csv(columns, rows, output / "report.csv")
    groups = group_runs(runs, rows, grouping_settings(settings))
    figures = _figures(runs, settings, groups, output)

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# seq2vae study report",
        "",
        f"{len(runs)} runs, written {created}. Settings shown are the config keys that differ between runs; "
        f"metrics are in nats per sentence (see the evaluation conventions in docs/CONVENTIONS.md). "
        f"Every value, with the majority baselines of the probes, is in [{csv_path.name}]({csv_path.name}).",
        "",
    ]
    if has_repeats(groups):
        lines += _group_section(groups, settings, columns, output)
    lines += [
        "## Runs",
        "",
        *_markdown_table(columns, rows),
        "",
    ]
    for title, path in figures:
        lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
    notes = [(run.name, note) for run in runs for note in (run.result or run.validation or {}).get("notes", [])]
    if notes:
        lines += ["## Notes", "", *(f"- **{name}**: {note}" for name, note in notes), ""]
    lines += [
        "## All metrics side by side",
        "",
        "```text",
        format_comparison([(run.name, run.as_eval_result()) for run in runs]),
        "```",
        "",
        "## Sources",
        "",
        *(f"- {run.name}: `{run.source}` (metrics from {run.metrics_from})" for run in runs),
        "",
    ]
    report = output / "report.md"
    report.write_text("\n".join(lines))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2vae report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_EVAL_JSON", help="run directories and/or eval JSON files")
    parser.add_argument("--output", required=True, help="directory for report.md, report.csv and the figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = write_report([Path(path) for path in args.inputs], Path(args.output))  # ReportError: exit 2
    print(f"wrote {report} and {report.with_suffix('.csv').name} with its figures")
    return 0
