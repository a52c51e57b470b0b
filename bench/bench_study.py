"""The paper's study in miniature on CPU: configs/paper/small-grid.tsv on configs/paper/small.yaml.

Writes the synthetic corpus, the offline tokenizer and the shards (the quickstart's own functions),
runs every row with `seq2vae sweep` (train, evaluate, resumable: run it again after an interruption)
and prints the table of the finding the paper reports: without the autoencoder phase and without a
KL threshold the posterior collapses (KL ~ 0, no active units); with them it does not. With seeds in
the grid, the table has one row per setting: n, then each metric as mean ± the half-width of its 95%
Student-t interval over the seeds (`seq2vae report`'s report_groups.csv), then the study's contrasts
as paired differences over the seeds (a seed gives both rows the same data order and initial weights).
The full report (markdown, CSV, figures) lands in OUTPUT/report. Run again on a finished OUTPUT, it
trains nothing and prints the tables again.

    python bench/bench_study.py                       # 24 rows (8 settings x 3 seeds), 21,600 training steps in all
    python bench/bench_study.py --output /tmp/study phases.1.steps=300
    OMP_NUM_THREADS=1 python bench/bench_study.py   # on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from seq2vae.commands import sweep as local_sweep
from seq2vae.commands.quickstart import prepare_corpus, prepare_shards, prepare_tokenizer
from seq2vae.evaluation.intervals import mean_interval

PAPER_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
TABLE_COLUMNS = (
    ("run", "run"), ("phases.0.steps", "phase-1 steps"), ("phases.1.deletion_rate", "deletion"),
    ("phases.1.free_bits", "lambda"), ("recon_nll", "recon"), ("kl", "KL"), ("neg_elbo", "-ELBO"),
    ("iw_nll", "IW-NLL"), ("mi_dataset", "MI"), ("active_units", "AU"), ("bleu", "BLEU"), ("probe_topic", "topic probe"),
)


# The grouped table (one row per setting, over its seeds): settings, then metrics as mean ± half-width.
GROUP_SETTINGS = (("phases.0.steps", "phase-1 steps"), ("phases.1.deletion_rate", "deletion"), ("phases.1.free_bits", "lambda"))
GROUP_METRICS = (
    ("recon_nll", "recon"), ("kl", "KL"), ("neg_elbo", "-ELBO"), ("iw_nll", "IW-NLL"), ("mi_dataset", "MI"),
    ("mi_upper_bound", "MI <="), ("prior_mismatch_gaussian", "mismatch >="), ("reliance_gain_vs_other_z", "reliance"),
    ("active_units", "AU"), ("bleu", "BLEU"), ("probe_topic", "topic probe"),
    ("prior_standard_normal_grammatical", "grammatical N(0,I)"),
)


def _interval_cell(row: dict, key: str) -> str:
    """'mean ± half-width' of report_groups.csv's _mean/_low/_high (the mean alone for n = 1); a
    saturated MI says so."""
    mean, low, high = (row.get(f"{key}_{part}", "") for part in ("mean", "low", "high"))
    if not mean:
        return "-"
    cell = f"{float(mean):.2f}" if not low else f"{float(mean):.2f} ± {(float(high) - float(low)) / 2:.2f}"
    saturated = row.get(f"{key}_saturated_runs", "")
    if saturated not in ("", "0"):
        cell += f" (saturated {saturated}/{row['n']})"
    return cell


def print_group_table(groups_csv: Path) -> None:
    """report_groups.csv as markdown: one row per setting, n, mean ± 95% interval half-width per metric."""
    with groups_csv.open() as stream:
        rows = list(csv.DictReader(stream))
    settings = [(key, title) for key, title in GROUP_SETTINGS if key in rows[0]]
    metrics = [(key, title) for key, title in GROUP_METRICS if any(row.get(f"{key}_mean") for row in rows)]
    titles = [title for _, title in settings] + ["n"] + [title for _, title in metrics] + ["runs"]
    print("| " + " | ".join(titles) + " |")
    print("|" + "---|" * len(titles))
    for row in rows:
        cells = [row[key] or "-" for key, _ in settings] + [row["n"]]
        cells += [_interval_cell(row, key) for key, _ in metrics] + [row["runs"]]
        print("| " + " | ".join(cells) + " |")


# (label, setting a, setting b): a minus b, settings as (phase-1 steps, deletion, lambda).
CONTRASTS = (
    ("phase 1 vs none, lambda 0", (300, 0.0, 0.0), (0, 0.0, 0.0)),
    ("phase 1 with 15% deletion vs none, lambda 0.5", (300, 0.15, 0.5), (0, 0.0, 0.5)),
    ("phase 1 with 15% deletion vs none, lambda 3", (300, 0.15, 3.0), (0, 0.0, 3.0)),
    ("40% vs 15% deletion, lambda 0.5", (300, 0.4, 0.5), (300, 0.15, 0.5)),
    ("15% vs no deletion, lambda 0", (300, 0.15, 0.0), (300, 0.0, 0.0)),
    ("lambda 3 vs 0.5, phase 1", (300, 0.15, 3.0), (300, 0.15, 0.5)),
)
CONTRAST_METRICS = (("iw_nll", "IW-NLL"), ("neg_elbo", "-ELBO"), ("mi_dataset", "MI"), ("reliance_gain_vs_other_z", "reliance"),
                    ("bleu", "BLEU"), ("probe_topic", "topic probe"), ("active_units", "AU"))


def print_contrasts(report_csv: Path) -> None:
    """Paired differences (a - b per seed): mean and 95% Student-t interval, bold when it excludes 0; a
    difference of MIs either of which is saturated is not a number and says so."""
    with report_csv.open() as stream:
        rows = list(csv.DictReader(stream))
    if not {"seed", "phases.0.steps", "phases.1.deletion_rate", "phases.1.free_bits"} <= set(rows[0]):
        return  # not the study's grid: no seeds, or a setting the contrasts name does not vary
    by_setting: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        setting = (int(row["phases.0.steps"]), float(row["phases.1.deletion_rate"]), float(row["phases.1.free_bits"]))
        by_setting.setdefault(setting, {})[row["seed"]] = row
    print("\n| contrast | " + " | ".join(title for _, title in CONTRAST_METRICS) + " |")
    print("|---|" + "---|" * len(CONTRAST_METRICS))
    for label, a, b in CONTRASTS:
        seeds = sorted(set(by_setting.get(a, {})) & set(by_setting.get(b, {})))
        if len(seeds) < 2:
            continue
        pairs = [(by_setting[a][seed], by_setting[b][seed]) for seed in seeds]
        cells = []
        for key, _ in CONTRAST_METRICS:
            if key == "mi_dataset" and any(row["mi_saturated"] == "True" for pair in pairs for row in pair):
                cells.append("saturated")
                continue
            if any(row.get(key, "") == "" for pair in pairs for row in pair):
                cells.append("-")
                continue
            interval = mean_interval([float(x[key]) - float(y[key]) for x, y in pairs])
            cell = f"{interval.mean:+.2f} [{interval.low:.2f}, {interval.high:.2f}]"
            cells.append(f"**{cell}**" if interval.low > 0 or interval.high < 0 else cell)
        print(f"| {label} (n = {len(seeds)}) | " + " | ".join(cells) + " |")


def print_table(report_csv: Path) -> None:
    """The report's CSV as a markdown table of the columns the finding needs (for bench/RESULTS.md): per
    setting over its seeds when report_groups.csv is there (some setting ran more than once), else per run."""
    groups_csv = report_csv.with_name("report_groups.csv")
    if groups_csv.is_file():
        print_group_table(groups_csv)
        print_contrasts(report_csv)
        return
    with report_csv.open() as stream:
        rows = list(csv.DictReader(stream))
    columns = [(key, title) for key, title in TABLE_COLUMNS if any(key in row for row in rows)]
    print("| " + " | ".join(title for _, title in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key, "")
            try:
                number = float(value)
                value = value if key in ("run", "active_units", "phases.0.steps") else f"{number:.2f}"
            except ValueError:
                pass
            cells.append(value or "-")
        print("| " + " | ".join(cells) + " |")


def prepare_study_data(output: Path, sentences: int) -> tuple[Path, Path]:
    """The CPU study's corpus, tokenizer and shards under `output` (reused when present): (shards, tokenizer)."""
    output.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(output, sentences, seed=0)
    tokenizer = prepare_tokenizer(output, corpus, "debug-t5", vocab_size=1000)
    return prepare_shards(output, corpus, tokenizer, valid_fraction=0.05, seed=0), tokenizer


def study_arguments(description: str, output: str, eval_args: str, extra=None) -> argparse.Namespace:
    """The command line every CPU-study script takes (--output, --sentences, --eval-args, overrides); logs INFO.

    `extra(parser)` adds a script's own options.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra is not None:
        extra(parser)
    parser.add_argument("--output", default=output, help="corpus, shards, runs and report")
    parser.add_argument("--sentences", type=int, default=20_000)
    parser.add_argument("--eval-args", default=eval_args)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return args


def main() -> int:
    args = study_arguments(__doc__, "runs/paper-small", "--iw-samples 10 --max-sentences 1000 --prior-samples 100")
    output = Path(args.output).resolve()
    shards, tokenizer = prepare_study_data(output, args.sentences)
    return run_study(PAPER_CONFIGS / "small-grid.tsv", output, shards, tokenizer, args, [], print_table)


def run_study(table: Path, output: Path, shards: Path, tokenizer: Path, args, overrides: list[str], printer) -> int:
    """`seq2vae sweep` of `table` on small.yaml into OUTPUT/runs and OUTPUT/report, then `printer(report.csv)`."""
    status = local_sweep.main([
        str(table), "--config", str(PAPER_CONFIGS / "small.yaml"),
        "--output-root", str(output / "runs"), "--report-dir", str(output / "report"), "--eval-args", args.eval_args,
        f"data.train={shards}", f"model.tokenizer={tokenizer}", *overrides, *args.overrides,
    ])
    report_csv = output / "report" / "report.csv"
    if report_csv.is_file():
        print(f"\n{report_csv}:\n")
        printer(report_csv)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
