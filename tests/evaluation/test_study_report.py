"""`seq2vae report` on real `seq2vae eval` results of three tiny models, and its one-line errors.

(The report over real training run directories, with curves, is checked by tests/commands/test_sweep.py.)
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from seq2vae.cli import main as seq2vae_main
from seq2vae.evaluation.study_figures import DPI, PCA_FIGURE, RATE_FIGURE, WIDE_FIGURE
from seq2vae.evaluation.study_report import write_report


@pytest.fixture(scope="module")
def three_results(tiny_t5_dir, tiny_bart_dir, collapsed_t5_dir, eval_jsonl, tmp_path_factory) -> list[Path]:
    """`seq2vae eval` JSONs of the tiny T5, the tiny BART and the collapsed T5 on the 20-sentence JSONL."""
    directory = tmp_path_factory.mktemp("study-results")
    paths = []
    for name, model in (("t5", tiny_t5_dir), ("bart", tiny_bart_dir), ("collapsed", collapsed_t5_dir)):
        output = directory / f"{name}.json"
        status = seq2vae_main([
            "eval", "--model", str(model), "--data", str(eval_jsonl), "--iw-samples", "2", "--device", "cpu",
            "--prior-samples", "0", "--interpolations", "0", "--max-reconstructions", "4", "--output", str(output),
        ])
        assert status == 0
        paths.append(output)
    return paths


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels, read back from the file."""
    pixels = mpimg.imread(path)
    return pixels.shape[1], pixels.shape[0]


def test_eval_json_keeps_posterior_means_with_their_metadata(three_results):
    result = json.loads(three_results[0].read_text())
    latents = result["latents"]
    assert len(latents["mu"]) == result["metrics"]["num_sentences"] == 20
    assert all(len(row) == result["metrics"]["latent_dim"] for row in latents["mu"])
    assert {"topic", "sentiment", "tense", "length"} <= set(latents["meta"][0])


def test_report_has_a_row_per_run_the_varied_settings_and_figures(three_results, tmp_path):
    report = write_report(three_results, tmp_path / "report")
    with (tmp_path / "report" / "report.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["run"] for row in rows] == ["t5", "bart", "collapsed"]
    columns = list(rows[0])
    # model.backbone differs (debug-t5 vs debug-bart); settings equal in all three are left out.
    assert columns[:2] == ["run", "model.backbone"] and "model.latent_dim" not in columns
    assert [row["model.backbone"] for row in rows] == ["debug-t5", "debug-bart", "debug-t5"]
    for column in ("recon_nll", "kl", "neg_elbo", "iw_nll", "ppl_iw_per_token", "ppl_iw_per_word", "mi_dataset",
                   "active_units", "bleu", "probe_topic", "probe_sentiment"):
        assert column in columns
    for row, path in zip(rows, three_results):
        metrics = json.loads(path.read_text())["metrics"]
        assert float(row["kl"]) == pytest.approx(metrics["kl"]) and int(row["active_units"]) == metrics["active_units"]
    assert int(rows[2]["active_units"]) == 0 and float(rows[2]["kl"]) == pytest.approx(0.0, abs=1e-6)

    text = report.read_text()
    embedded = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # No run directory, so no training curves; the other figures (the three differ in KL: a
    # rate-distortion figure) and one PCA per run.
    assert embedded == ["rate_distortion.png", "kl_per_dimension.png", "metrics_by_setting.png", "pca_00.png",
                        "pca_01.png", "pca_02.png"]
    for name in embedded:
        expected = PCA_FIGURE if name.startswith("pca") else RATE_FIGURE if name.startswith("rate") else WIDE_FIGURE
        assert png_size(tmp_path / "report" / name) == (int(expected[0] * DPI), int(expected[1] * DPI))
    assert "posterior collapse" in text  # the collapsed model's note
    assert "| t5 | debug-t5 |" in text
    # t5 and collapsed share every known setting, but an exported model's training is unknown: no groups.
    assert "Settings over seeds" not in text and not (tmp_path / "report" / "report_groups.csv").exists()


def test_report_cli_errors_name_the_path_in_one_line(three_results, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text("run_dir: x\n")
    broken = tmp_path / "broken.json"
    broken.write_text('{"metrics": ')
    for bad, message in ((missing, "no such file or directory"), (empty, "no metrics"), (broken, "not valid JSON")):
        status = seq2vae_main(["report", str(three_results[0]), str(bad), "--output", str(tmp_path / "out")])
        error = capsys.readouterr().err.strip()
        assert status == 2
        assert len(error.splitlines()) == 1 and str(bad) in error and message in error
