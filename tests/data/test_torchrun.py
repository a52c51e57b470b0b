from __future__ import annotations

import json
from pathlib import Path

import pytest

from seq2vae.data.stream import read_split

SCRIPT = Path(__file__).with_name("torchrun_loader.py")

pytestmark = pytest.mark.slow  # a 2-process torchrun job


def test_loader_inside_a_real_two_process_torchrun(shard_dir, launch, tmp_path):
    done = launch.run([str(SCRIPT), "--shards", str(shard_dir), "--output", str(tmp_path)], timeout=240)
    assert done.returncode == 0, launch.tail(done)
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert records[0]["steps"] == records[1]["steps"] == records[0]["batches_per_epoch"] > 0
    seen = records[0]["keys"] + records[1]["keys"]
    everything = [sample["key"] for sample in read_split(shard_dir, "train")]
    assert len(seen) == len(set(seen)) == len(everything) - records[0]["dropped_per_epoch"]
    assert set(seen) <= set(everything)
    assert records[0]["state"]["epoch"] == records[1]["state"]["epoch"] == 1
