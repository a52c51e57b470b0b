"""`seq2vae generate` end to end, through the installed console script."""

from __future__ import annotations

import json
import subprocess


def run_generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["seq2vae", "generate", *args], capture_output=True, text=True, timeout=120)


def test_generate_reconstructs_samples_and_interpolates(tiny_t5_dir):
    result = run_generate(
        "--model", str(tiny_t5_dir), "--reconstruct", "a dog ran", "--sample", "3",
        "--interpolate", "a dog ran", "the old man reads", "--steps", "4", "--max-new-tokens", "6", "--json",
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert [item["input"] for item in output["reconstructions"]] == ["a dog ran"]
    assert len(output["samples"]) == 3 and len(output["interpolation"]) == 4
    again = json.loads(run_generate("--model", str(tiny_t5_dir), "--sample", "3", "--max-new-tokens", "6", "--json").stdout)
    assert again["samples"] == output["samples"]  # seeded


def test_generate_without_a_task_is_a_usage_error(tiny_t5_dir):
    result = run_generate("--model", str(tiny_t5_dir))
    assert result.returncode == 2 and "nothing to do" in result.stderr


def test_dispatcher_lists_commands_and_rejects_unknown_ones():
    listing = subprocess.run(["seq2vae", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("shard", "train", "eval", "slurm", "quickstart", "export", "generate"):
        assert f"  {command}" in listing
    unknown = subprocess.run(["seq2vae", "trian"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


def test_generate_arguments_and_a_model_without_tokenizer_get_one_line(tiny_t5_dir, tmp_path):
    """Through the real dispatcher, several command lines in one process (tests/command_driver.py)."""
    import shutil
    import sys
    from pathlib import Path

    model = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_t5_dir, model, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    cases = {
        "--sample must be >= 0, got -1": ["--sample", "-1"],
        "--num-beams must be >= 1, got 0": ["--sample", "2", "--num-beams", "0"],
        "--steps must be >= 2, got 1": ["--interpolate", "a", "b", "--steps", "1"],
        "--temperature must be > 0.0, got 0.0": ["--sample", "1", "--temperature", "0"],
        "--max-new-tokens must be >= 1, got 0": ["--sample", "1", "--max-new-tokens", "0"],
    }
    argvs = {message: ["generate", "--model", str(tiny_t5_dir), *args] for message, args in cases.items()}
    argvs["has no tokenizer files"] = ["generate", "--model", str(model), "--sample", "1"]
    (tmp_path / "cases.json").write_text(json.dumps(argvs))
    driver = Path(__file__).parents[1] / "command_driver.py"
    completed = subprocess.run(
        [sys.executable, str(driver), str(tmp_path / "cases.json")], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.splitlines()[-1])
    for message, result in results.items():
        lines = result["stderr"].splitlines()
        assert result["exit_code"] == 2 and len(lines) == 1, result
        assert lines[0].startswith("seq2vae generate: error: ") and message in lines[0], result
