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
