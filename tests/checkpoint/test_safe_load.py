"""Export and evaluation never run code planted in a run directory's checkpoint (issue 12.2)."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # real checkpoints of every stage (the golden runs) and a 2-rank run


class RunsCode:
    """Unpickling this runs `touch MARKER` (what an attacker's checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_run(golden_runs, stage: str, destination: Path) -> Path:
    return shutil.copytree(golden_runs[stage] / "run", destination, ignore=shutil.ignore_patterns("tensorboard"))


def _latest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


@pytest.mark.parametrize("planted", ["torch_save", "raw_pickle"])
def test_export_and_eval_refuse_a_planted_pickle_without_running_it(planted, golden_runs, tmp_path, capsys):
    from seq2vae.cli import main as seq2vae_main

    run_dir = _copy_run(golden_runs, "zero2", tmp_path / "run")
    marker = tmp_path / "code-ran"
    target = _latest(run_dir) / "mp_rank_00_model_states.pt"
    if planted == "torch_save":
        torch.save({"module": RunsCode(marker)}, target)
    else:
        target.write_bytes(pickle.dumps({"module": RunsCode(marker)}))

    assert seq2vae_main(["export", str(run_dir), "--output", str(tmp_path / "exported")]) == 2
    message = capsys.readouterr().err
    assert "refusing to load" in message and str(target) in message, message
    assert not marker.exists() and not (tmp_path / "exported").exists()

    text = tmp_path / "sentences.txt"
    text.write_text("the cat sat on the mat\n")
    assert seq2vae_main(["eval", "--model", str(run_dir), "--data", str(text), "--iw-samples", "2", "--device", "cpu"]) == 2
    message = capsys.readouterr().err
    assert "refusing to load" in message and str(target) in message, message
    assert not marker.exists()

    # The planted file is really dangerous: DeepSpeed's own way of loading it runs the code.
    if planted == "torch_save":
        torch.load(target, weights_only=False)
    else:
        pickle.loads(target.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("stage", ["zero1", "zero3"])
def test_real_checkpoints_of_every_stage_pass_the_allow_list(stage, golden_runs, tmp_path):
    from seq2vae.checkpoint.export import export_run
    from seq2vae.checkpoint.safe_load import load_weights_only
    from seq2vae.model import Seq2SeqVAE

    run_dir = golden_runs[stage] / "run"
    for checkpoint in (run_dir / "checkpoints").glob("step_*"):
        files = sorted(checkpoint.glob("*.pt"))
        assert files, checkpoint
        for path in files:
            load_weights_only(path)
    vae = Seq2SeqVAE.from_pretrained(export_run(run_dir, tmp_path / "exported"))
    assert vae.config.latent_dim == 16
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # the override does not leak
