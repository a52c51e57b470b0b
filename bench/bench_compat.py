"""Our defaults against the reference T5-VAE's quirks, one `model.reference_compat` switch per row, on CPU.

The CPU study's setup (configs/paper/small.yaml: synthetic corpus, debug T5, phase 1 then the VAE
with free bits 0.5 and 15% deletion), shortened; each row turns one quirk on (docs/CONVENTIONS.md,
"Reference-compatibility switches"), the last all of them. `prefix_reshape` needs prefix injection,
which small.yaml does not use, so it is not a row here. Prints the markdown table for bench/RESULTS.md.

    python bench/bench_compat.py                      # 7 rows of 150 + 300 steps, ~8 min on 2 cores
    python bench/bench_compat.py --output /tmp/compat phases.1.steps=600
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from seq2vae.commands import sweep as local_sweep
from seq2vae.commands.quickstart import prepare_corpus, prepare_shards, prepare_tokenizer

PAPER_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"
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
METRICS = (("recon_nll", "recon"), ("kl", "KL"), ("iw_nll", "IW-NLL"), ("mi_dataset", "MI"), ("active_units", "AU"), ("bleu", "BLEU"))


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/compat-small", help="corpus, shards, runs and report")
    parser.add_argument("--sentences", type=int, default=20_000)
    parser.add_argument("--eval-args", default="--iw-samples 10 --max-sentences 300 --prior-samples 0 --interpolations 0")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every row")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus(output, args.sentences, seed=0)
    tokenizer = prepare_tokenizer(output, corpus, "debug-t5", vocab_size=1000)
    shards = prepare_shards(output, corpus, tokenizer, valid_fraction=0.05, seed=0)
    table = output / "compat-grid.tsv"
    write_table(table)
    status = local_sweep.main([
        str(table), "--config", str(PAPER_CONFIGS / "small.yaml"), "--output-root", str(output / "runs"),
        "--report-dir", str(output / "report"), "--eval-args", args.eval_args,
        f"data.train={shards}", f"model.tokenizer={tokenizer}", "phases.0.steps=150", "phases.1.steps=300",
        "checkpoint.every_steps=150", "validation.every_steps=150", *args.overrides,
    ])
    report_csv = output / "report" / "report.csv"
    if report_csv.is_file():
        print(f"\n{report_csv}:\n")
        print_table(report_csv)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
