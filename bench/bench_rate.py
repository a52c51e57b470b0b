"""A rate sweep on CPU: configs/paper/rate-grid.tsv on configs/paper/small.yaml, for the rate-distortion figure.

The CPU study's recipe with phase 2's beta under the KL-target controller (`beta.kind: kl_target`,
docs/diagnostics.md), one target rate per row and free bits 0. Writes the study's corpus, tokenizer and
shards (bench_study.prepare_study_data), runs the rows with `seq2vae sweep` (resumable) and prints the
markdown table for bench/RESULTS.md: the target, the rate achieved in training's last steps and on the
held-out sentences, distortion and the bounds, and the numbers that say whether the rate is information
(decoder reliance) or prior mismatch, and whether N(0, I) samples are sentences. OUTPUT/report holds
the report with the rate-distortion figure (rate_distortion.png).

    python bench/bench_rate.py                        # 6 rows of 300 + 600 steps, ~1.5 min a row on 2 idle cores
    python bench/bench_rate.py --output /tmp/rate phases.1.steps=300
"""

from __future__ import annotations

import csv
from pathlib import Path

from bench_study import (  # bench/ scripts run as `python bench/NAME.py`
    PAPER_CONFIGS,
    prepare_study_data,
    run_study,
    study_arguments,
)

from seq2vae.evaluation.study_runs import load_run

TARGET_KEY = "phases.1.beta.target_kl"
# Training's KL is one noisy draw per step: the achieved training rate is the mean of the records of
# this many final steps.
LAST_STEPS = 60
# (report.csv column, header): eval metrics of each row.
METRICS = (
    ("kl", "KL (eval)"), ("recon_nll", "recon"), ("neg_elbo", "-ELBO"), ("iw_nll", "IW-NLL"),
    ("reliance_gain_vs_other_z", "reliance gain"), ("prior_standard_normal_grammatical", "grammatical N(0,I)"),
    ("mi_upper_bound", "MI <="), ("prior_mismatch_gaussian", "mismatch >="),  # MI itself saturates at log N
)


def _training_rate(run_dir: Path) -> tuple[str, str]:
    """(mean train/kl over the last LAST_STEPS steps, final beta) from the run's metrics.jsonl."""
    curves = [record for record in load_run(run_dir).curves if "train/kl" in record]
    if not curves:
        return "-", "-"
    last = [record["train/kl"] for record in curves if record["step"] > curves[-1]["step"] - LAST_STEPS]
    return f"{sum(last) / len(last):.2f}", f"{curves[-1].get('train/beta', float('nan')):.3f}"


def _number(value: str, key: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value or "-"
    return f"{100 * number:.0f}%" if key.endswith("_grammatical") else f"{number:.2f}"


def print_table(report_csv: Path) -> None:
    """One row per run, sorted by target: target, training KL and final beta, then the eval metrics."""
    with report_csv.open() as stream:
        rows = list(csv.DictReader(stream))
    runs = [(load_run(Path(row["source"])), row) for row in rows]
    runs.sort(key=lambda pair: float(pair[0].settings.get(TARGET_KEY) or 0))
    print("| run | target KL | KL (train, last 60 steps) | final beta | " + " | ".join(title for _, title in METRICS) + " |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    for run, row in runs:
        train_kl, beta = _training_rate(Path(row["source"]))
        cells = [run.name, str(run.settings.get(TARGET_KEY, "-")), train_kl, beta]
        cells += [_number(row.get(key, ""), key) for key, _ in METRICS]
        print("| " + " | ".join(cells) + " |")


def main() -> int:
    args = study_arguments(__doc__, "runs/rate-small", "--iw-samples 10 --max-sentences 1000 --prior-samples 100")
    output = Path(args.output).resolve()
    shards, tokenizer = prepare_study_data(output, args.sentences)
    return run_study(PAPER_CONFIGS / "rate-grid.tsv", output, shards, tokenizer, args, [], print_table)


if __name__ == "__main__":
    raise SystemExit(main())
