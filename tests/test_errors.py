"""seq2vae.errors: user errors are one line from rank 0 only; noisy third-party warnings show once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "debug-zero2.yaml"

# The same deprecated collective five times, with the warnings filters changed between calls (as
# subprocess's os.get_exec_path does, which DeepSpeed's CPU accelerator runs dozens of times a step);
# first without, then with the entry points' setting.
REPEATED_WARNING = """
import warnings, torch, torch.distributed as dist
from seq2vae.errors import quiet_known_warnings
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
x = torch.zeros(2)
def five_calls():
    for _ in range(5):
        with warnings.catch_warnings():
            pass
        dist.all_gather_into_tensor(x, x)
five_calls()
print("QUIET", file=__import__("sys").stderr, flush=True)
quiet_known_warnings()
five_calls()
dist.destroy_process_group()
"""


def test_a_deprecation_warning_from_torch_shows_once_per_process(free_port):
    completed = subprocess.run(
        [sys.executable, "-W", "default", "-c", REPEATED_WARNING.format(port=free_port)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    before, after = completed.stderr.split("QUIET")
    warning = "`torch.distributed.all_gather_into_tensor` is deprecated"
    assert before.count(warning) == 5  # Python's own "default"/"once" repeat it after every filter change
    assert after.count(warning) == 1


def test_user_errors_are_printed_by_rank_0_only():
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    argv = [sys.executable, "-m", "seq2vae", "train", "--config", str(CONFIG), "optim.lrr=1"]
    rank0 = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**env, "RANK": "0"})
    rank1 = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**env, "RANK": "1"})
    assert rank0.returncode == rank1.returncode == 2
    assert (rank0.stderr.startswith("seq2vae train: error: command line: unknown key 'optim.lrr'")
            and rank0.stderr.count("\n") == 1)
    assert rank1.stderr == ""


def test_only_the_one_handler_prints_error_lines():
    """Every command reports a user error by raising a UserError that `seq2vae.cli` delivers (one line
    from rank 0, exit 2): no command prints its own "error:" line."""
    repo = Path(__file__).resolve().parents[1]
    printers = [
        f"{path.relative_to(repo)}:{number}"
        for path in repo.rglob("*.py") if path.parts[len(repo.parts)] not in ("tests", "bench")
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "print(" in line and "error:" in line
    ]
    assert printers and all(place.startswith("errors.py:") for place in printers), printers
