"""Our defaults against the reference T5-VAE's quirks, one `model.reference_compat` switch per row, on CPU.

The CPU study's setup (configs/paper/small.yaml: synthetic corpus, debug T5, phase 1 then the VAE
with free bits 0.5 and 15% deletion), shortened; each row turns one quirk on (docs/CONVENTIONS.md,
"Reference-compatibility switches"), row 6 all of them. `prefix_reshape` needs prefix injection, which
small.yaml does not use, so rows 7 and 8 switch to `model.injection=prefix` (the reference's mode) and
measure the reshape against our per-sentence one. Prints the markdown table for bench/RESULTS.md.

    python bench/bench_compat.py                      # 9 rows of 150 + 300 steps, ~10 min on 2 cores
    python bench/bench_compat.py --rows 7,8 --output /tmp/compat   # only those rows
    python bench/bench_compat.py --output /tmp/compat phases.1.steps=600

Each row runs in OUTPUT/runs/task-<row>, whichever rows are selected, so a later `--rows` run reuses
(skips) finished rows and never mistakes one row's directory for another's.
"""

from __future__ import annotations

import csv
from pathlib import Path

from bench_study import (  # bench/ scripts run as `python bench/NAME.py`
    prepare_study_data,
    run_study,
    study_arguments,
)

COMPAT = "model.reference_compat."
FREEZE = "phases.0.freeze"
ROWS = [  # (label, overrides of small.yaml)
    ("ours (defaults)", {FREEZE: "[]"}),
    ("pool_padding", {FREEZE: "[]", COMPAT + "pool_padding": "true"}),
    ("denoise (randint drop + ids/mask swap)", {FREEZE: "[]", COMPAT + "denoise": "true"}),
    ("recon_mean_length=64", {FREEZE: "[]", COMPAT + "recon_mean_length": "64"}),
    ("phase 1 freezes decoder (ours)", {FREEZE: "[decoder]"}),
    ("phase 1 freezes decoder + freeze_shared_embedding", {FREEZE: "[decoder]", COMPAT + "freeze_shared_embedding": "true"}),
    ("all four + shared-embedding freeze", {FREEZE: "[decoder]", COMPAT + "pool_padding": "true", COMPAT + "denoise": "true",
                                            COMPAT + "recon_mean_length": "64", COMPAT + "freeze_shared_embedding": "true"}),
    ("prefix injection (ours: per-sentence reshape)", {FREEZE: "[]", "model.injection": "prefix"}),
    ("prefix injection + prefix_reshape", {FREEZE: "[]", "model.injection": "prefix", COMPAT + "prefix_reshape": "true"}),
]
METRICS = (("recon_nll", "recon"), ("kl", "KL"), ("iw_nll", "IW-NLL"), ("mi_dataset", "MI"), ("active_units", "AU"),
           ("bleu", "BLEU"))


def selected_rows(text: str | None) -> list[int]:
    """`--rows 7,8` -> [7, 8]; None -> every row. Raises SystemExit naming a row that does not exist."""
    if text is None:
        return list(range(len(ROWS)))
    try:
        rows = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise SystemExit(f"--rows {text!r}: expected comma-separated row numbers, e.g. 7,8") from None
    unknown = [row for row in rows if not 0 <= row < len(ROWS)]
    if unknown or not rows:
        raise SystemExit(f"--rows {text!r}: rows are 0-{len(ROWS) - 1}")
    return rows


def write_table(path: Path, rows: list[int]) -> None:
    """The sweep table of `rows`; each names its run directory task-<row>, so a subset keeps the full table's."""
    keys = list(dict.fromkeys(key for row in rows for key in ROWS[row][1]))
    lines = ["\t".join([*keys, "run_dir"])]
    for row in rows:
        overrides = ROWS[row][1]
        lines.append("\t".join([*(overrides.get(key, "") for key in keys), f"{{run_dir}}/task-{row}"]))
    path.write_text("\n".join(lines) + "\n")


def print_table(report_csv: Path, selected: list[int]) -> None:
    with report_csv.open() as stream:
        rows = {row["run"]: row for row in csv.DictReader(stream)}
    print("| row | " + " | ".join(title for _, title in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for index in selected:
        label = ROWS[index][0]
        row = rows.get(f"task-{index}", {})
        cells = []
        for key, _ in METRICS:
            value = row.get(key, "")
            try:
                cells.append(value if key == "active_units" else f"{float(value):.2f}")
            except ValueError:
                cells.append(value or "-")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> int:
    args = study_arguments(
        __doc__, "runs/compat-small", "--iw-samples 10 --max-sentences 300 --prior-samples 0 --interpolations 0",
        extra=lambda parser: parser.add_argument("--rows", help="comma-separated rows to run, e.g. 7,8 (default: all)"),
    )
    rows = selected_rows(args.rows)
    output = Path(args.output).resolve()
    shards, tokenizer = prepare_study_data(output, args.sentences)
    table = output / "compat-grid.tsv"
    write_table(table, rows)
    steps = ["phases.0.steps=150", "phases.1.steps=300", "checkpoint.every_steps=150", "validation.every_steps=150"]
    return run_study(table, output, shards, tokenizer, args, steps, lambda report: print_table(report, rows))


if __name__ == "__main__":
    raise SystemExit(main())
