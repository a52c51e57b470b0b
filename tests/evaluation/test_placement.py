"""Model placement for `seq2vae eval`: the memory rule, sizing from safetensors headers, and a real
2-rank ZeRO-3 evaluation (torchrun, gloo) against the 1-rank replica evaluation of the same model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from seq2vae.evaluation.cli import main
from seq2vae.evaluation.placement import choose_placement, stored_size
from seq2vae.train.distributed import free_port

EVAL_ARGS = ["--iw-samples", "6", "--batch-size", "8", "--seed", "3", "--device", "cpu", "--max-reconstructions", "8"]
GIB = 2**30


def test_placement_rule():
    # flan-t5-xxl-sized (11B) in bf16 on 80 GB GPUs: 22 GB fits one -> replica; on 16 GB -> partitioned.
    assert choose_placement(11_000_000_000, 2, 80 * GIB, world_size=8) == "replica"
    assert choose_placement(11_000_000_000, 2, 16 * GIB, world_size=8) == "zero3"
    with pytest.raises(ValueError, match="run on at least 6 ranks"):
        choose_placement(11_000_000_000, 4, 16 * GIB, world_size=2)  # 41 GiB in 8 GiB budgets: 6 ranks
    with pytest.raises(ValueError, match="do not fit 1 rank"):
        choose_placement(11_000_000_000, 2, 16 * GIB, world_size=1)


def test_model_size_is_read_from_the_weight_files_without_loading_them(tiny_t5_dir):
    from seq2vae.model import Seq2SeqVAE

    vae = Seq2SeqVAE.from_pretrained(tiny_t5_dir)
    count, dtype_bytes = stored_size(tiny_t5_dir)
    assert count == sum(parameter.numel() for parameter in vae.parameters())  # tied weights counted once
    assert dtype_bytes == 4


def test_two_rank_zero3_evaluation_equals_one_rank(tiny_t5_dir, eval_jsonl, tmp_path):
    one = tmp_path / "one.json"
    assert main(["--model", str(tiny_t5_dir), "--data", str(eval_jsonl), *EVAL_ARGS, "--output", str(one)]) == 0
    two = tmp_path / "zero3.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "seq2vae", "eval", "--model", str(tiny_t5_dir), "--data",
        str(eval_jsonl), *EVAL_ARGS, "--placement", "zero3", "--output", str(two),
    ]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    replica, zero3 = json.loads(one.read_text()), json.loads(two.read_text())
    assert (replica["placement"], zero3["placement"], zero3["world_size"]) == ("replica", "zero3", 2)
    # ZeRO-3 gathers the same fp32 weights and runs the same kernels on the same batches, so the only
    # possible difference is float summation order: 1e-5 relative is far below any metric's meaning.
    assert set(zero3["metrics"]) == set(replica["metrics"])
    for key, value in replica["metrics"].items():
        if isinstance(value, float):
            assert zero3["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert zero3["metrics"][key] == value, key
    for key in ("reconstruction", "prior_samples", "interpolations"):  # greedy decoding: identical text
        assert zero3[key] == replica[key], key
