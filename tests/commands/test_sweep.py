"""`seq2vae sweep`: a 2-row table trained and evaluated locally, an interrupted row resumed, a finished
row skipped, the report written, and the same table rendered as the SLURM array with the same run
directories (render only: no SLURM needed)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from seq2vae.evaluation.study_figures import DPI, WIDE_PANEL_ROW

SMALL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "paper" / "small.yaml"
# Row 0: no phase 1 (vanilla VAE), no threshold; row 1: 2 autoencoder steps, then free bits 0.5.
TABLE = "# two rows of the CPU study\nphases.0.steps\tphases.1.free_bits\n0\t0\n2\t0.5\n"
TINY = [
    "phases.1.steps=3", "data.micro_batch_size=8", "checkpoint.every_steps=2", "validation.every_steps=2",
    "validation.max_batches=1", "validation.num_reconstructions=0", "logging.every_steps=1",
]
EVAL_ARGS = "--iw-samples 2 --max-sentences 16 --prior-samples 0 --interpolations 0 --max-reconstructions 4"

pytestmark = pytest.mark.slow  # a sweep that trains, resumes and evaluates its rows


def output(process: subprocess.CompletedProcess) -> str:
    return process.stdout + process.stderr


@pytest.fixture(scope="module")
def sweep(shard_dir, tokenizer_dir, launch, tmp_path_factory):
    """Row 0 interrupted at step 2 by hand, then the sweep run twice; returns (root, table, overrides, runs)."""
    root = tmp_path_factory.mktemp("local-sweep")
    table = root / "table.tsv"
    table.write_text(TABLE)
    overrides = [f"data.train={shard_dir}", f"model.tokenizer={tokenizer_dir}", *TINY]
    # Interrupt row 0 where the sweep will run it: its training stops (and checkpoints) at step 2 of 3.
    interrupted = launch.seq2vae("train", "--config", str(SMALL_CONFIG), *overrides, "phases.0.steps=0", "phases.1.free_bits=0",
                                 f"run_dir={root / 'runs' / 'task-0'}", "stop_at_step=2", timeout=600)
    assert interrupted.returncode == 0, output(interrupted)[-4000:]
    command = ["sweep", str(table), "--config", str(SMALL_CONFIG), "--output-root", str(root / "runs"),
               "--eval-args", EVAL_ARGS, *overrides]
    first = launch.seq2vae(*command, timeout=600)
    second = launch.seq2vae(*command, timeout=600)
    return root, table, overrides, first, second


def test_rows_train_resume_and_evaluate(sweep):
    root, _, _, first, _ = sweep
    log = output(first)
    assert first.returncode == 0, log[-4000:]
    assert "row 0: resuming from step 2" in log and re.search(r"resumed from \S+step_00000002 at step 2", log)
    assert "row 1: training in" in log
    for index, total in ((0, 3), (1, 5)):
        run_dir = root / "runs" / f"task-{index}"
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, total + 1))  # the resumed row continued, without repeating a step
        result = json.loads((run_dir / "eval.json").read_text())
        assert result["metrics"]["num_sentences"] == 16 and result["iw_samples"] == 2
        assert not (run_dir / "eval.json.tmp").exists()
    summary = [line.split() for line in log.splitlines() if re.match(r"^[01] +finished", line)]
    assert [(row[0], row[2]) for row in summary] == [("0", "3/3"), ("1", "5/5")]


def test_finished_rows_are_skipped(sweep):
    root, _, _, _, second = sweep
    log = output(second)
    assert second.returncode == 0, log[-4000:]
    assert "row 0: already finished (step 3/3" in log and "row 1: already finished (step 5/5" in log
    assert "training in" not in log and "evaluating" not in log


def test_the_sweep_ends_with_a_report_over_its_rows(sweep):
    root = sweep[0]
    report = root / "runs" / "report"
    with (report / "report.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["run"] for row in rows] == ["task-0", "task-1"]
    assert [(row["phases.0.steps"], row["phases.1.free_bits"]) for row in rows] == [("0", "0.0"), ("2", "0.5")]
    assert all(row["metrics_from"] == "eval" and row["iw_nll"] for row in rows)
    text = (report / "report.md").read_text()
    assert "![Training curves (reconstruction, KL, beta)](training_curves.png)" in text
    pixels = mpimg.imread(report / "training_curves.png")
    assert (pixels.shape[1], pixels.shape[0]) == (int(WIDE_PANEL_ROW[0] * DPI), int(WIDE_PANEL_ROW[1] * DPI))
    assert (report / "pca_00.png").is_file() and (report / "pca_01.png").is_file()


def test_the_same_table_renders_as_a_slurm_array_with_the_same_run_dirs(sweep, launch):
    root, table, overrides, _, _ = sweep
    rendered = launch.seq2vae("slurm", "render", "--kind", "sweep", "--sweep", str(table), "--config", str(SMALL_CONFIG),
                              "--device", "cpu", "--output-dir", str(root / "logs"), *overrides, f"run_dir={root / 'runs'}")
    assert rendered.returncode == 0, output(rendered)
    script = rendered.stdout
    assert "#SBATCH --array=0-1" in script
    for index in (0, 1):
        assert f"run_dir={root / 'runs' / f'task-{index}'}" in script
