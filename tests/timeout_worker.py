"""A torchrun worker for test_distributed: after `set_collective_timeout`, a rank whose peer never
joins a collective raises within the new (short) timeout, not the long one the world started with.

    timeout_worker.py RESULT_PATH STEP_TIMEOUT_S
Rank 0 runs the all-reduce that rank 1 skips and writes what happened to RESULT_PATH as JSON.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from seq2vae.distributed import init_world, set_collective_timeout

result_path, step_timeout_s = Path(sys.argv[1]), float(sys.argv[2])
world = init_world(timeout_s=3600)
dist.barrier()  # both ranks are up under the start-up timeout
set_collective_timeout(step_timeout_s)
if world.rank == 0:
    started = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1))
        outcome = {"raised": None}
    except Exception as error:  # gloo reports the timeout as a RuntimeError / DistBackendError
        outcome = {"raised": type(error).__name__, "message": str(error)[:300]}
    outcome["waited_s"] = time.monotonic() - started
    result_path.write_text(json.dumps(outcome))
else:
    # Never joins the all-reduce; leaves once rank 0 has given up on it (or after a minute).
    deadline = time.monotonic() + 60
    while not result_path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
sys.stdout.flush()
os._exit(0)  # the group is broken after the timeout: no orderly teardown
