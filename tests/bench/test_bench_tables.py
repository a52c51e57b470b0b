"""The tables bench_study.py and bench_rate.py print for bench/RESULTS.md, from hand-made run directories."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

from seq2vae.evaluation.study_report import write_report

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch):
    """Imports a bench script as `python bench/NAME.py` would (bench/ on the path: bench_rate imports bench_study)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return lambda name: importlib.import_module(name)


def write_run(root: Path, name: str, settings: str, metrics: dict, curves: list[dict] = ()) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"run_dir: {run_dir}\n{settings}")
    (run_dir / "eval.json").write_text(json.dumps({"model": str(run_dir), "iw_samples": 10, "metrics": metrics}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in curves))
    return run_dir


def test_study_table_is_one_row_per_setting_with_intervals(bench, tmp_path, capsys):
    runs = []
    for index, (seed, free_bits, recon, saturated) in enumerate(((0, 0.5, 10.0, True), (0, 3.0, 20.0, False),
                                                                (1, 0.5, 12.0, False), (2, 0.5, 14.0, True))):
        settings = f"seed: {seed}\nphases:\n  - {{steps: 300}}\n  - {{free_bits: {free_bits}}}\n"
        runs.append(write_run(tmp_path / "runs", f"task-{index}", settings,
                              {"recon_nll": recon, "kl": 4.0, "mi_dataset": 6.9, "mi_saturated": saturated}))
    write_report(runs, tmp_path / "report")
    bench("bench_study").print_table(tmp_path / "report" / "report.csv")
    lines = capsys.readouterr().out.splitlines()
    half = 4.3027 * 2 / math.sqrt(3)  # recon 10, 12, 14: s = 2, n = 3
    assert lines[0] == "| lambda | n | recon | KL | MI | runs |"
    assert lines[2] == f"| 0.5 | 3 | 12.00 ± {half:.2f} | 4.00 ± 0.00 | 6.90 ± 0.00 (saturated 2/3) | task-0 task-2 task-3 |"
    assert lines[3] == "| 3.0 | 1 | 20.00 | 4.00 | 6.90 | task-1 |"



def test_study_contrasts_are_paired_by_seed_and_refuse_a_saturated_mi(bench, tmp_path, capsys):
    runs = []
    # Vanilla (no phase 1, no deletion) against phase 1 with 15% deletion, lambda 0.5, seeds 0-2: the
    # paired IW-NLL differences are -3, -4, -5 (mean -4, s = 1), however far apart the seeds' levels are.
    for seed, level in enumerate((40.0, 50.0, 60.0)):
        # A lambda-3 vanilla row too, so lambda varies (report.csv keeps only varied settings); its
        # contrasts lack their other side and are left out.
        rows = ((0, 0.0, 0.5, 0.0, False), (300, 0.15, 0.5, seed + 3.0, seed == 2), (0, 0.0, 3.0, 0.0, False))
        for index, (steps, deletion, free_bits, gain, saturated) in enumerate(rows):
            settings = (f"seed: {seed}\nphases:\n  - {{steps: {steps}, deletion_rate: {deletion}}}\n"
                        f"  - {{free_bits: {free_bits}, deletion_rate: {deletion}}}\n")
            metrics = {key: 0.0 for key, _ in bench("bench_study").CONTRAST_METRICS}
            metrics.update({"iw_nll": level - gain, "mi_dataset": 5.0, "mi_saturated": saturated})
            runs.append(write_run(tmp_path / "runs", f"task-{3 * seed + index}", settings, metrics))
    write_report(runs, tmp_path / "report")
    bench("bench_study").print_contrasts(tmp_path / "report" / "report.csv")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| phase 1") or line.startswith("| lambda")]
    half = 4.3027 / math.sqrt(3)
    assert len(lines) == 1 and lines[0].startswith("| phase 1 with 15% deletion vs none, lambda 0.5 (n = 3) | ")
    cells = lines[0].split(" | ")
    assert cells[1] == f"**-4.00 [{-4 - half:.2f}, {-4 + half:.2f}]**" and cells[3] == "saturated"  # bold: excludes 0
    assert cells[2] == "+0.00 [0.00, 0.00]" and cells[5] == "-"  # -ELBO equal; BLEU absent from the fixture


def test_rate_table_sorts_by_target_and_reads_the_training_rate(bench, tmp_path, capsys):
    runs = []
    for index, target in enumerate((16, 4)):
        settings = f"phases:\n  - {{steps: 2}}\n  - {{beta: {{kind: kl_target, target_kl: {target}}}}}\n"
        # Training logs every 10 steps; the achieved rate is the mean over the last 60 steps (records 50..100 here).
        curves = [{"step": step, "train/kl": target + (step >= 50), "train/beta": step / 1000} for step in range(10, 101, 10)]
        runs.append(write_run(tmp_path / "runs", f"task-{index}", settings,
                              {"kl": target + 0.5, "recon_nll": 30.0 - target, "prior_standard_normal_grammatical": 0.25},
                              curves))
    write_report(runs, tmp_path / "report")
    bench("bench_rate").print_table(tmp_path / "report" / "report.csv")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | target KL | KL (train, last 60 steps) | final beta | KL (eval) | recon |")
    assert lines[2].startswith("| task-1 | 4 | 5.00 | 0.100 | 4.50 | 26.00 |") and "| 25% |" in lines[2]
    assert lines[3].startswith("| task-0 | 16 | 17.00 | 0.100 | 16.50 | 14.00 |")
