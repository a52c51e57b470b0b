"""seq2vae.distributed: how a world of ranks ends, its collective timeouts, the DeepSpeed it needs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from seq2vae.distributed import check_deepspeed_version, install_extensions_dir, use_install_extensions_dir

WORKER = str(Path(__file__).with_name("world_worker.py"))
LAUNCHES = 4


@pytest.mark.slow
def test_ranks_that_shut_the_world_down_always_exit_zero(launch):
    # A gloo group left up at interpreter exit aborts a rank (SIGABRT) in about half of the launches;
    # a finished run must never turn into a failed job that way.
    for _ in range(LAUNCHES):
        process = launch.run([WORKER], timeout=180)
        assert process.returncode == 0, launch.tail(process)
        assert "SIGABRT" not in process.stderr and "terminate called" not in process.stderr, launch.tail(process)


def _allreduce_buffers() -> set[str]:
    return {path.name for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*")}


@pytest.mark.slow
def test_ranks_leave_no_shared_memory_buffers_behind(launch):
    # DeepSpeed's CPU comm never unlinks its ~66 MiB all-reduce buffer per rank; a day of runs filled RAM.
    before = _allreduce_buffers()
    process = launch.run([WORKER], timeout=180)
    assert process.returncode == 0, launch.tail(process)
    assert _allreduce_buffers() - before == set()


TIMEOUT_WORKER = str(Path(__file__).with_name("timeout_worker.py"))


@pytest.mark.slow
def test_step_timeout_replaces_the_startup_timeout(launch, tmp_path):
    # The world starts with a one-hour timeout; after set_collective_timeout(2) a collective that a
    # peer never joins fails in seconds, which is what ends a job whose rank died mid-run.
    result_path = tmp_path / "result.json"
    process = launch.run([TIMEOUT_WORKER, str(result_path), "2"], timeout=180)
    assert process.returncode == 0, launch.tail(process)
    outcome = json.loads(result_path.read_text())
    assert outcome["raised"] is not None, outcome
    assert outcome["waited_s"] < 60, outcome  # far below the 3600 s start-up timeout


def test_deepspeed_older_than_the_tested_minimum_is_refused():
    check_deepspeed_version("0.19.8")
    check_deepspeed_version("0.20.1")
    with pytest.raises(RuntimeError, match=r"DeepSpeed 0.16.4 is older than 0.19.8.*pip install 'deepspeed>=0.19.8,<0.20'"):
        check_deepspeed_version("0.16.4")


def test_compiled_ops_go_under_the_install_keyed_by_versions(tmp_path, monkeypatch):
    import deepspeed
    import torch

    directory = install_extensions_dir(tmp_path)
    assert directory is not None and directory.is_dir()
    assert directory.parent == tmp_path / "share" / "seq2vae" / "torch_extensions"
    assert f"torch{torch.__version__}".replace("+", "-") in directory.name
    assert f"deepspeed{deepspeed.__version__}" in directory.name
    blocked = tmp_path / "file"
    blocked.write_text("")  # a prefix that cannot hold directories: torch's default stays
    assert install_extensions_dir(blocked) is None

    monkeypatch.setattr("sys.prefix", str(tmp_path))
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    use_install_extensions_dir()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(directory)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/users/choice")
    use_install_extensions_dir()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/users/choice"
