"""A KL target in a real (single-process) training run: the logged beta follows the controller from the
logged KL, step by step, and a stopped-and-resumed run continues the same beta sequence."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from seq2vae.config import ConfigError
from seq2vae.train.config import BetaSchedule, load_train_config
from seq2vae.train.schedules import next_kl_target_beta

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TARGET = BetaSchedule(kind="kl_target", target_kl=0.5, start=0.0, value=1.0, gain=0.5)
CONTROLLED = [
    "phases.0.steps=2", "phases.1.steps=6", "phases.1.free_bits=0", "phases.1.beta.kind=kl_target",
    f"phases.1.beta.target_kl={TARGET.target_kl}", f"phases.1.beta.start={TARGET.start}",
    f"phases.1.beta.value={TARGET.value}", f"phases.1.beta.gain={TARGET.gain}", "validation.every_steps=0",
]


def _train(launch, overrides: list[str], run_dir: Path, *extra: str) -> None:
    args = ["train", "--config", str(CONFIGS / "debug-zero2.yaml"), *overrides, f"run_dir={run_dir}", *extra]
    done = subprocess.run([sys.executable, "-m", "seq2vae", *args], env=launch.env(), capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, launch.tail(done)


@pytest.mark.slow
def test_beta_follows_the_kl_target_controller_and_resumes_exactly(data_overrides, launch, tmp_path):
    overrides = [*data_overrides, *CONTROLLED]
    _train(launch, overrides, tmp_path / "full", "--resume", "never")
    full = launch.metrics(tmp_path / "full")
    phase = [m for m in full if m["step"] > 2]
    assert [m["train/kl_target"] for m in phase] == [TARGET.target_kl] * 6
    assert phase[0]["train/beta"] == TARGET.start
    for before, after in itertools.pairwise(phase):
        assert after["train/beta"] == pytest.approx(
            next_kl_target_beta(before["train/beta"], before["train/kl"], TARGET), abs=1e-12
        )
    assert len({m["train/beta"] for m in phase}) > 2  # the controller moved beta

    _train(launch, overrides, tmp_path / "resumed", "--resume", "never", "stop_at_step=5")
    _train(launch, overrides, tmp_path / "resumed", "--resume", "auto")
    resumed = launch.metrics(tmp_path / "resumed")
    assert [m["train/beta"] for m in resumed if m["step"] > 2][-6:] == [m["train/beta"] for m in phase]


def test_a_kl_target_without_a_target_is_refused_naming_the_key(data_overrides):
    with pytest.raises(ConfigError, match=r"phases\.1\.beta\.target_kl"):
        load_train_config(CONFIGS / "debug-zero2.yaml", [*data_overrides, "run_dir=unused", "phases.1.beta.kind=kl_target"])
    with pytest.raises(ConfigError, match=r"phases\.1\.beta\.value"):
        load_train_config(CONFIGS / "debug-zero2.yaml", [*data_overrides, "run_dir=unused", "phases.1.beta.kind=kl_target",
                                                         "phases.1.beta.target_kl=3", "phases.1.beta.start=1",
                                                         "phases.1.beta.value=1"])
