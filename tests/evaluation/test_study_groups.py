"""Seeds in `seq2vae report`: runs of one setting grouped, mean and 95% Student-t interval worked by hand,
a saturated MI marked, a model-only eval never grouped, the rate-distortion figure drawn when rates differ."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from seq2vae.evaluation.intervals import mean_interval, t_quantile_975
from seq2vae.evaluation.study_figures import DPI, RATE_FIGURE
from seq2vae.evaluation.study_groups import is_seed_setting, rate_sweeps
from seq2vae.evaluation.study_report import write_report

# Setting A (free bits 0.5) with three seeds, setting B (free bits 3) with one.
# A's recon 10, 12, 14: mean 12, s = 2, half-width t_{0.975,2} * 2 / sqrt(3) = 4.3027 * 1.1547 = 4.9683.
# A's KL 3, 4, 5: mean 4, s = 1, half-width 4.3027 / sqrt(3) = 2.4841.
RUNS = [  # (name, seed, free_bits, recon, KL, MI, MI saturated)
    ("task-0", 0, 0.5, 10.0, 3.0, 6.90, True),
    ("task-1", 0, 3.0, 20.0, 30.0, 6.80, False),
    ("task-2", 1, 0.5, 12.0, 4.0, 6.80, False),
    ("task-3", 2, 0.5, 14.0, 5.0, 6.90, True),
]
HALF_RECON = 4.3027 * 2 / math.sqrt(3)
HALF_KL = 4.3027 / math.sqrt(3)


def write_run(root: Path, name: str, seed: int, free_bits: float, recon: float, kl: float, mi: float,
              saturated: bool) -> Path:
    """A run directory as `seq2vae sweep` leaves it, reduced to what the report reads."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        f"run_dir: {run_dir}\nseed: {seed}\nmodel: {{latent_dim: 32}}\n"
        f"phases:\n  - {{name: autoencoder, steps: 300}}\n  - {{name: vae, steps: 600, free_bits: {free_bits}}}\n"
    )
    metrics = {"recon_nll": recon, "kl": kl, "neg_elbo": recon + kl, "mi_dataset": mi, "mi_saturated": saturated,
               "active_units": 32, "latent_dim": 32, "true_nll": 8.0}
    (run_dir / "eval.json").write_text(json.dumps({"model": str(run_dir), "iw_samples": 10, "metrics": metrics}))
    return run_dir


@pytest.fixture
def study(tmp_path) -> list[Path]:
    return [write_run(tmp_path / "runs", *run) for run in RUNS]


def read_csv(path: Path) -> list[dict]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


def test_t_quantiles_and_the_interval_of_three_values():
    assert t_quantile_975(1) == 12.7062 and t_quantile_975(2) == 4.3027 and t_quantile_975(30) == 2.0423
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=1e-4)  # past the table: Cornish-Fisher
    assert t_quantile_975(10_000) == pytest.approx(1.9602, abs=1e-4)
    interval = mean_interval([10.0, 12.0, 14.0])
    assert (interval.n, interval.mean) == (3, 12.0)
    assert (interval.low, interval.high) == (pytest.approx(12 - HALF_RECON), pytest.approx(12 + HALF_RECON))
    single = mean_interval([5.0])
    assert (single.n, single.mean, single.low, single.high, single.half_width) == (1, 5.0, None, None, None)
    assert mean_interval([]) is None


def test_seed_like_settings():
    assert is_seed_setting("seed") and is_seed_setting("data.shuffle_seed") and is_seed_setting("eval.seed")
    assert not is_seed_setting("phases.1.free_bits") and not is_seed_setting("seeds_per_row")


def test_runs_differing_only_in_seed_form_one_group_with_hand_computed_intervals(study, tmp_path):
    report = write_report(study, tmp_path / "report")
    groups = read_csv(tmp_path / "report" / "report_groups.csv")
    assert [(row["phases.1.free_bits"], row["n"], row["runs"]) for row in groups] == [
        ("0.5", "3", "task-0 task-2 task-3"), ("3.0", "1", "task-1")]
    assert "seed" not in groups[0]  # the seed is what repeats, not a setting
    a, b = groups
    assert float(a["recon_nll_mean"]) == pytest.approx(12.0)
    assert float(a["recon_nll_low"]) == pytest.approx(12 - HALF_RECON, abs=1e-3)
    assert float(a["recon_nll_high"]) == pytest.approx(12 + HALF_RECON, abs=1e-3)
    assert float(a["kl_low"]) == pytest.approx(4 - HALF_KL, abs=1e-3) and a["kl_n"] == "3"
    assert float(a["neg_elbo_mean"]) == pytest.approx(16.0)
    assert a["mi_dataset_saturated_runs"] == "2" and a["mi_saturated_runs"] == "2" and a["iw_samples"] == "10"
    assert float(b["recon_nll_mean"]) == 20.0 and b["recon_nll_low"] == b["recon_nll_high"] == ""  # n = 1

    text = report.read_text()
    grouped = text.index("## Settings over seeds")
    assert grouped < text.index("## Runs")  # the per-run table stays, below the grouped one
    row_a = next(line for line in text.splitlines() if line.startswith("| 0.50 | 3 |"))
    cells = [cell.strip() for cell in row_a.strip("|").split("|")]
    headers = [cell.strip() for cell in text.splitlines()[text.splitlines().index(row_a) - 2].strip("|").split("|")]
    by_header = dict(zip(headers, cells))
    assert by_header["recon"] == "12.00 ± 4.97" and by_header["KL"] == "4.00 ± 2.48"
    assert by_header["MI (set)"] == "6.87 ± 0.14 (saturated 2/3)"  # never read as a result
    assert by_header["MI at log N"] == "2/3" and by_header["runs"] == "task-0, task-2, task-3"
    assert "| 3.00 | 1 | 20.00 |" in text  # one run: its value, no interval
    assert len(read_csv(tmp_path / "report" / "report.csv")) == 4


def test_without_repeats_the_report_is_per_run_only(study, tmp_path):
    report = write_report([study[0], study[1]], tmp_path / "report")
    assert not (tmp_path / "report" / "report_groups.csv").exists()
    assert "Settings over seeds" not in report.read_text() and "## Runs" in report.read_text()


def test_runs_of_unknown_training_are_never_grouped(tmp_path):
    """Two eval JSONs of exported models with equal model settings are two models, not two seeds."""
    paths = []
    for name, kl in (("a", 1.0), ("b", 9.0)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"model": str(tmp_path / "nowhere"), "metrics": {"kl": kl, "recon_nll": 5.0}}))
        paths.append(path)
    write_report(paths, tmp_path / "report")
    assert not (tmp_path / "report" / "report_groups.csv").exists()


def test_rate_distortion_figure_when_rates_differ(study, tmp_path):
    report = write_report(study, tmp_path / "report")
    assert "![Rate and distortion (recon NLL against KL)](rate_distortion.png)" in report.read_text()
    pixels = mpimg.imread(tmp_path / "report" / "rate_distortion.png")
    assert (pixels.shape[1], pixels.shape[0]) == (int(RATE_FIGURE[0] * DPI), int(RATE_FIGURE[1] * DPI))
    assert (tmp_path / "report" / "rate_distortion.png").stat().st_size < 150_000

    # The two settings differ only in free bits: one rate sweep, drawn as one line.
    from seq2vae.evaluation.study_groups import group_runs
    from seq2vae.evaluation.study_report import report_rows
    from seq2vae.evaluation.study_runs import load_runs

    runs = load_runs(study)
    _, rows = report_rows(runs)
    groups = group_runs(runs, rows, ["phases.1.free_bits"])
    assert [(label, [g.runs for g in members]) for label, members in rate_sweeps(groups, ["phases.1.free_bits"])] == [
        ("1.free_bits sweep", [["task-0", "task-2", "task-3"], ["task-1"]])]


def test_no_rate_distortion_figure_when_every_run_has_the_same_rate(tmp_path):
    paths = [write_run(tmp_path / "runs", f"task-{i}", 0, free_bits, 10.0 + i, 4.0, 1.0, False)
             for i, free_bits in enumerate((0.5, 3.0))]
    report = write_report(paths, tmp_path / "report")
    assert "rate_distortion.png" not in report.read_text()
