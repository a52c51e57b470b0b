"""Fixtures for training tests: real shards, the packaged debug configs, and real torchrun launches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seq2vae.train.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PROBE = Path(__file__).with_name("engine_probe.py")
CORPUS_SENTENCES = 600


def worker_env() -> dict[str, str]:
    """CPU DeepSpeed, one thread per rank (2 ranks share the 2 cores), quiet tokenizers."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def torchrun_command(script_args: list[str], nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        *script_args,
    ]


def torchrun(script_args: list[str], timeout: float = 300, nproc: int = 2) -> subprocess.CompletedProcess:
    """Runs a torchrun job to completion; the output is kept for assertion messages."""
    return subprocess.run(
        torchrun_command(script_args, nproc), env=worker_env(), capture_output=True, text=True, timeout=timeout
    )


def train_args(config: Path | str, *overrides: str) -> list[str]:
    return ["-m", "seq2vae.train", "--config", str(config), *overrides]


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tail(process) -> str:
    return ((process.stdout or "") + (process.stderr or ""))[-6000:]


@pytest.fixture(scope="session")
def shard_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """Webdataset shards of the synthetic corpus (train + 10% valid), as `seq2vae shard` writes them."""
    from seq2vae.data.shards import write_shards
    from seq2vae.data.synthetic import write_jsonl

    root = tmp_path_factory.mktemp("train-data")
    corpus = write_jsonl(root / "corpus.jsonl", CORPUS_SENTENCES, seed=1)
    write_shards([str(corpus)], root / "shards", str(tokenizer_dir), valid_fraction=0.1, shard_size=150, progress=False)
    return root / "shards"


@pytest.fixture(scope="session")
def data_overrides(shard_dir, tokenizer_dir) -> list[str]:
    """Overrides pointing a packaged debug config at the test shards and tokenizer."""
    return [f"data.train={shard_dir}", f"model.tokenizer={tokenizer_dir}"]


class Launch:
    """The helpers above, handed to tests as the `launch` fixture (importlib mode: no `import conftest`)."""

    configs = CONFIGS
    probe = PROBE
    env = staticmethod(worker_env)
    free_port = staticmethod(free_port)
    command = staticmethod(torchrun_command)
    run = staticmethod(torchrun)
    train_args = staticmethod(train_args)
    metrics = staticmethod(read_metrics)
    tail = staticmethod(tail)


@pytest.fixture(scope="session")
def launch() -> type[Launch]:
    return Launch
