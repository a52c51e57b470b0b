"""Our defaults against the reference T5-VAE's quirks, one `model.reference_compat` switch per row, on CPU.

The CPU study's setup (configs/paper/small.yaml: synthetic corpus, debug T5, phase 1 then the VAE
with free bits 0.5 and 15% deletion), shortened; each row turns one quirk on (docs/CONVENTIONS.md,
"Reference-compatibility switches"), the last all of them. `prefix_reshape` needs prefix injection,
which small.yaml does not use, so it is not a row here. Prints the markdown table for bench/RESULTS.md.

    python bench/bench_compat.py                      # 7 rows of 150 + 300 steps, ~8 min on 2 cores
    python bench/bench_compat.py --output /tmp/compat phases.1.steps=600
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
ROWS = [  # (label, phase-1 freeze, compat overrides)
    ("ours (defaults)", "[]", {}),
    ("pool_padding", "[]", {"pool_padding": "true"}),
    ("denoise (randint drop + ids/mask swap)", "[]", {"denoise": "true"}),
    ("recon_mean_length=64", "[]", {"recon_mean_length": "64"}),
    ("phase 1 freezes decoder (ours)", "[decoder]", {}),
    ("phase 1 freezes decoder + freeze_shared_embedding", "[decoder]", {"freeze_shared_embedding": "true"}),
    ("all four + shared-embedding freeze", "[decoder]", {"pool_padding": "true", "denoise": "true", "recon_mean_length": "64",
                                                          "freeze_shared_embedding": "true"}),
]
SWITCHES = ("pool_padding", "denoise", "recon_mean_length", "freeze_shared_embedding")
METRICS = (("recon_nll", "recon"), ("kl", "KL"), ("iw_nll", "IW-NLL"), ("mi_dataset", "MI"), ("active_units", "AU"),
           ("bleu", "BLEU"))


def write_table(path: Path) -> None:
    header = ["phases.0.freeze", *(COMPAT + name for name in SWITCHES)]
    lines = ["\t".join(header)]
    for _, freeze, compat in ROWS:
        lines.append("\t".join([freeze, *(compat.get(name, "") for name in SWITCHES)]))
    path.write_text("\n".join(lines) + "\n")


def print_table(report_csv: Path) -> None:
    with report_csv.open() as stream:
        rows = {row["run"]: row for row in csv.DictReader(stream)}
    print("| row | " + " | ".join(title for _, title in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for index, (label, _, _) in enumerate(ROWS):
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
    args = study_arguments(__doc__, "runs/compat-small",
                           "--iw-samples 10 --max-sentences 300 --prior-samples 0 --interpolations 0")
    output = Path(args.output).resolve()
    shards, tokenizer = prepare_study_data(output, args.sentences)
    table = output / "compat-grid.tsv"
    write_table(table)
    steps = ["phases.0.steps=150", "phases.1.steps=300", "checkpoint.every_steps=150", "validation.every_steps=150"]
    return run_study(table, output, shards, tokenizer, args, steps, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
