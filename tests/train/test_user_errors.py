"""Every mistake the user fixes reaches them as one line from `seq2vae train` (the real dispatcher), exit code 2,
before the run directory is created or touched; `--debug` shows the traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).parents[1] / "command_driver.py"


def _train(launch, *args: str) -> subprocess.CompletedProcess:
    return launch.seq2vae("train", *args)


def _tree(directory) -> dict:
    return ({str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
            if directory.exists() else {})


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, tokenizer_dir):
    """name -> (overrides, words the message must hold, run directory prepared beforehand or None)."""
    from seq2vae.data.synthetic import generate_corpus
    from seq2vae.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("bad-inputs")
    other_tokenizer = root / "other-tokenizer"
    train_tokenizer((row["text"] for row in generate_corpus(300, seed=5)), other_tokenizer, vocab_size=300)
    (root / "not-shards").mkdir()
    weightless = root / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text(json.dumps({"model_type": "t5"}))
    dangling = root / "dangling-run"
    (dangling / "checkpoints").mkdir(parents=True)
    (dangling / "checkpoints" / "latest").write_text("step_00000007\n")
    return {
        "unknown DeepSpeed preset": (["deepspeed=zero9"], ["key 'deepspeed'", "zero9", "zero2"], None),
        "global batch not divisible": (["data.global_batch_size=12"], ["data.global_batch_size", "8 x 1"], None),
        "tokenizer mismatch": (
            [f"model.tokenizer={other_tokenizer}"], ["were tokenised with", "training config's tokenizer"], None
        ),
        "missing meta.json": ([f"data.train={root / 'not-shards'}"], ["meta.json not found"], None),
        "missing latest target": (["resume=auto"], ["latest", "step_00000007", "does not exist"], dangling),
        "missing tokenizer": ([f"model.tokenizer={root / 'nowhere'}"], ["model.tokenizer", "does not exist"], None),
        "missing backbone weights": ([f"model.backbone={weightless}"], ["model.backbone", "no weights"], None),
    }


def test_bad_inputs_get_one_line_exit_2_and_leave_the_run_directory_untouched(launch, data_overrides, bad_inputs, tmp_path):
    config = launch.configs / "debug-zero2.yaml"
    cases, run_dirs, before = {}, {}, {}
    for name, (overrides, _, prepared_run_dir) in bad_inputs.items():
        run_dirs[name] = prepared_run_dir or tmp_path / name.replace(" ", "-")
        before[name] = _tree(run_dirs[name])
        cases[name] = ["train", "--config", str(config), *data_overrides, f"run_dir={run_dirs[name]}", *overrides]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    driver = subprocess.run(
        [sys.executable, str(DRIVER), str(tmp_path / "cases.json")], env=launch.env(), capture_output=True, text=True, timeout=300
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads(driver.stdout.splitlines()[-1])
    for name, (_, words, _) in bad_inputs.items():
        exit_code, stderr = results[name]["exit_code"], results[name]["stderr"]
        context = f"{name}: exit code {exit_code}\n{stderr[-3000:]}"
        assert exit_code == 2, context
        errors = [line for line in stderr.splitlines() if line.startswith("seq2vae train: error: ")]
        assert len(errors) == 1 and "Traceback" not in stderr, context
        assert all(word in errors[0] for word in words), context
        assert _tree(run_dirs[name]) == before[name], f"{name}: the run directory changed"


def test_debug_shows_the_traceback(launch, data_overrides, tmp_path):
    completed = _train(
        launch, "--config", str(launch.configs / "debug-zero2.yaml"), *data_overrides, f"run_dir={tmp_path / 'run'}",
        "deepspeed=zero9", "--debug",
    )
    assert completed.returncode == 2
    assert "Traceback (most recent call last)" in completed.stderr and "DeepSpeedConfigError" in completed.stderr
    assert completed.stderr.count("seq2vae train: error: ") == 1


@pytest.mark.slow
def test_a_corrupt_sample_stops_a_2_rank_run_with_one_message(launch, shard_dir, tokenizer_dir, tmp_path, out_of_range_copy):
    """on_corrupt=error: whichever rank reads the bad sample, rank 0 prints its message once, every rank exits 2."""
    shards = tmp_path / "shards"
    out_of_range_copy(shard_dir, shards, [f"train-00000{i}.tar" for i in range(4)], 0, 5000)
    completed = launch.run(launch.train_args(
        launch.configs / "debug-zero2.yaml", f"data.train={shards}", f"model.tokenizer={tokenizer_dir}",
        f"run_dir={tmp_path / 'run'}", "data.on_corrupt=error",
    ), timeout=300)
    errors = [line for line in completed.stderr.splitlines() if "seq2vae train: error: " in line]
    assert completed.returncode != 0 and len(errors) == 1, launch.tail(completed)
    assert "corrupt sample 'train_" in errors[0] and ".tar" in errors[0] and "token id 5000" in errors[0]
    assert "exitcode  : 2" in completed.stderr  # torchrun's summary: our exit code, not a crash
    repository = re.escape(str(launch.configs.parent))
    assert "[rank" not in completed.stderr and not re.search(f'File "{repository}/(?!\\.venv)', completed.stderr)
    assert launch.metrics(tmp_path / "run") == []  # stopped before its first step was logged
