"""`seq2vae eval` refuses what it cannot score honestly: one line on stderr, exit 2, no results written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ARGS = ["--iw-samples", "2", "--batch-size", "8", "--device", "cpu", "--max-sentences", "8"]


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seq2vae", "eval", *args, *ARGS],
        capture_output=True, text=True, timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )


def _one_error_line(completed: subprocess.CompletedProcess) -> str:
    lines = [line for line in completed.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("seq2vae eval: error: "), completed.stderr[-3000:]
    return lines[0]


def test_model_without_tokenizer_files_is_refused_for_shards(tiny_t5_dir, eval_shard_dir, tmp_path):
    model = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_t5_dir, model, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "spiece*"))
    assert not list(model.glob("tokenizer*"))
    output = tmp_path / "metrics.json"
    line = _one_error_line(_eval("--model", str(model), "--data", str(eval_shard_dir), "--output", str(output)))
    assert "no tokenizer files" in line and str(eval_shard_dir) in line
    assert not output.exists()


def test_out_of_range_token_id_names_the_shard_and_sample(tiny_t5_dir, eval_shard_dir, tmp_path, out_of_range_copy):
    shards = tmp_path / "shards"
    key = out_of_range_copy(eval_shard_dir, shards, "valid-000000.tar", 2, 99_999)
    output = tmp_path / "metrics.json"
    line = _one_error_line(_eval("--model", str(tiny_t5_dir), "--data", str(shards), "--output", str(output)))
    assert key in line and "valid-000000.tar" in line and "token id 99999" in line
    assert not output.exists()
