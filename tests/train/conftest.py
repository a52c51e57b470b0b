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


# ------------------------------------------------------------------------------ golden runs
# Shared by test_initial_weights.py (stage agreement), test_safe_load.py, test_init_from.py,
# test_consolidate.py and test_export.py (real checkpoints of real runs): launched once per session.
INITIAL_WEIGHTS_PROBE = Path(__file__).with_name("initial_weights_probe.py")
GOLDEN_STAGES = ("zero1", "zero2", "zero3")
GOLDEN_STEPS = 20


def _probe_config(directory: Path, stage: str, data_overrides: list[str]) -> Path:
    from seq2vae.config import save_config
    from seq2vae.train.config import load_train_config

    # fp32 (the debug config's precision) and DeepSpeed's torch AdamW (torch_adam in every packaged
    # template) on every stage. Dropout and z draws agree without further settings: every stage seeds
    # each rank's generator the same way after the engine is built and consumes it in the same order.
    # Only the order of floating-point sums differs (ZeRO-3 reduces and norms per partition), which
    # is why agreement is to 1e-5 and not bitwise. No free bits: the threshold's kink turns those
    # 1e-7 differences into 1e-4 once a sentence's KL_d sits at lambda (its gradient is on in one run
    # and off in the other; seen at step 17 of 20, with loss and KL still equal to 1e-7).
    config = load_train_config(
        CONFIGS / "debug-zero3.yaml",
        [
            *data_overrides,
            f"deepspeed={stage}",
            f"run_dir={directory / 'run'}",
            f"phases.1.steps={GOLDEN_STEPS - 4}",
            "phases.1.free_bits=0",
            "checkpoint.every_steps=1000",
            "validation.every_steps=0",
            "validation.max_batches=1",
            "resume=never",
        ],
    )
    path = directory / "config.yaml"
    save_config(config, path)
    return path


@pytest.fixture(scope="session")
def golden_runs(data_overrides, tmp_path_factory) -> dict[str, Path]:
    """Probe output directory per run: the three 2-rank stages and "zero3-1rank" (start only).

    Each directory holds config.yaml and initial.safetensors (the gathered initial weights); a stage's
    DIR/run is a complete run directory (metrics.jsonl, checkpoints at steps 4 and 20).
    """
    root = tmp_path_factory.mktemp("initial-weights")
    outputs = {}
    for stage in GOLDEN_STAGES:
        out = root / stage
        out.mkdir()
        done = torchrun([str(INITIAL_WEIGHTS_PROBE), str(_probe_config(out, stage, data_overrides)), str(out)])
        assert done.returncode == 0, tail(done)
        outputs[stage] = out
    single = root / "zero3-1rank"
    single.mkdir()
    done = torchrun([str(INITIAL_WEIGHTS_PROBE), str(_probe_config(single, "zero3", data_overrides)), str(single), "--no-train"], nproc=1)
    assert done.returncode == 0, tail(done)
    outputs["zero3-1rank"] = single
    return outputs
