"""Backbones and tokenizers as local snapshots: resolved when rendering, read offline by the job.

No network here: a hub name is resolved from a Hugging Face cache the test fills itself (HF_HOME),
with the hub endpoint pointed at a closed local port so that any download attempt fails at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seq2vae.config import ConfigError
from seq2vae.model.vae import BACKBONE_SUBDIR
from seq2vae.slurm import JobOptions, render_job
from seq2vae.slurm.snapshot import is_hub_name, offline_overrides

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(hf_home: Path, repo: str, files: dict[str, Path]) -> Path:
    """The cache layout `snapshot_download` writes: refs/main -> commit, snapshots/<commit>/<files>."""
    storage = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    for name, source in files.items():
        shutil.copyfile(source, snapshot / name)
    return snapshot


def train_config(directory: Path, **model) -> Path:
    path = directory / "train.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(directory / "run"), "model": model,
                                    "data": {"train": "shards", "micro_batch_size": 4, "global_batch_size": 8}}))
    return path


def render_offline(config: Path, hf_home: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`seq2vae slurm render` as a user runs it, with this HF cache and no reachable hub."""
    env = dict(os.environ, HF_HOME=str(hf_home), HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE", None)  # resolution itself must not need offline mode to stay off the network
    return subprocess.run(
        [sys.executable, "-m", "seq2vae", "slurm", "render", "--config", str(config), "--device", "cpu", "--ranks-per-node", "2",
         "--output-dir", str(config.parent / "logs"), *overrides],
        env=env, capture_output=True, text=True, timeout=180,
    )


def test_hub_names_resolve_to_cached_snapshots_without_network(tiny_t5_dir, tokenizer_dir, tmp_path):
    backbone = tiny_t5_dir / BACKBONE_SUBDIR
    files = {name: backbone / name for name in ("config.json", "model.safetensors")}
    files.update({path.name: path for path in tokenizer_dir.iterdir() if path.is_file()})
    hf_home = tmp_path / "hf"
    snapshot = fill_hub_cache(hf_home, "acme/tiny-t5", files)
    config = train_config(tmp_path, backbone="acme/tiny-t5", latent_dim=16)

    result = render_offline(config, hf_home)
    assert result.returncode == 0, result.stderr
    # The job gets the snapshot directory (its tokenizer comes from the same directory) and stays offline.
    assert f"OVERRIDES=(model.backbone={snapshot})" in result.stdout
    assert "export HF_HUB_OFFLINE=1" in result.stdout and "export TRANSFORMERS_OFFLINE=1" in result.stdout

    # A cache that holds only the config (e.g. from an AutoConfig call) is not a usable snapshot: the
    # download it then needs fails here (the hub cannot be reached), and the error names the key.
    partial = tmp_path / "hf-partial"
    fill_hub_cache(partial, "acme/tiny-t5", {"config.json": backbone / "config.json"})
    result = render_offline(config, partial)
    assert result.returncode == 2 and result.stdout == ""
    assert "error: model.backbone 'acme/tiny-t5': the snapshot in" in result.stderr
    assert "has no weights (*.safetensors or pytorch_model*.bin), and the hub did not provide it" in result.stderr


def test_local_directories_and_debug_backbones_pass_through_unchanged(tiny_t5_dir, tokenizer_dir, tmp_path):
    local = train_config(tmp_path, backbone=str(tiny_t5_dir / BACKBONE_SUBDIR), tokenizer=str(tokenizer_dir))
    assert offline_overrides(local, []) == []
    assert offline_overrides(local, ["model.backbone=debug-bart"]) == []
    job = render_job("train", local, [], JobOptions(device="cpu"))
    assert "OVERRIDES=()" in job.script and "export HF_HUB_OFFLINE=1" in job.script
    # A config without a model section (a user's own module) needs nothing either.
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"run_dir": "runs/x"}))
    assert offline_overrides(plain, [], module="my_trainer") == []
    # A mistyped directory is not taken for a hub name.
    assert is_hub_name("google/flan-t5-base") and is_hub_name("t5-small")
    with pytest.raises(ConfigError, match=r"'/no/such/model' is not a directory"):
        offline_overrides(local, ["model.backbone=/no/such/model"])
