from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seq2vae.data.stream import read_split

SCRIPT = Path(__file__).with_name("torchrun_loader.py")

pytestmark = pytest.mark.slow  # a 2-process torchrun job


def test_loader_inside_a_real_two_process_torchrun(shard_dir, tmp_path, free_port):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port), str(SCRIPT), "--shards", str(shard_dir), "--output", str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert records[0]["steps"] == records[1]["steps"] == records[0]["batches_per_epoch"] > 0
    seen = records[0]["keys"] + records[1]["keys"]
    everything = [sample["key"] for sample in read_split(shard_dir, "train")]
    assert len(seen) == len(set(seen)) == len(everything) - records[0]["dropped_per_epoch"]
    assert set(seen) <= set(everything)
    assert records[0]["state"]["epoch"] == records[1]["state"]["epoch"] == 1
