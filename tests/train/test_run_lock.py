"""One run per run directory; ranks die with their launcher; corrupt samples counted in metrics.jsonl.

One long 2-rank torchrun job (A) serves three checks: a second job (B) on the same directory fails at
once naming A's holder, A's `skip` of an out-of-range token id shows up in metrics.jsonl, and after
A's torchrun is SIGKILLed its workers are gone within seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from seq2vae.train.run_lock import RunDirectoryInUseError, RunDirectoryLock

HOLD_LOCK = (
    "import sys, time; from seq2vae.train.run_lock import RunDirectoryLock; "
    "lock = RunDirectoryLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
)


def _hold_in_subprocess(run_dir) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_holder_is_named_and_a_dead_one_is_taken_over(tmp_path):
    holder = _hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(RunDirectoryInUseError, match=f"pid {holder.pid} on host"):
            RunDirectoryLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunDirectoryLock(tmp_path).acquire()  # the kernel released the dead holder's flock
    assert f"pid {holder.pid}" in lock.stale_note and lock.previous_holder["pid"] == holder.pid
    lock.release()
    again = RunDirectoryLock(tmp_path).acquire()  # a released lock is free, and not reported as stale
    assert again.stale_note is None or str(os.getpid()) not in again.stale_note
    again.release()


# Lustre mounted without `flock` answers flock with ENOSYS; no such mount here, so each process
# replaces fcntl.flock with a function that answers the same before taking the lock.
WITHOUT_FLOCK = """
import errno, fcntl, os, sys, time
def unsupported(fd, operation):
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
fcntl.flock = unsupported
from seq2vae.train.run_lock import RunDirectoryInUseError, RunDirectoryLock
try:
    lock = RunDirectoryLock(sys.argv[1]).acquire()
except RunDirectoryInUseError as error:
    print("refused:", error, flush=True)
    sys.exit(3)
print("held", lock.fallback_path, lock.stale_note, flush=True)
if sys.argv[2] == "hold":
    time.sleep(60)
lock.release()
print("released", os.path.exists(lock.path.with_name(".lock.held")), flush=True)
"""


def _without_flock(run_dir, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WITHOUT_FLOCK, str(run_dir), mode], stdout=subprocess.PIPE, text=True)


def test_without_flock_an_exclusive_lock_file_excludes_a_second_run_until_its_holder_ends(tmp_path):
    holder = _without_flock(tmp_path, "hold")
    try:
        assert holder.stdout.readline().split()[:2] == ["held", str(tmp_path / ".lock.held")]
        second = _without_flock(tmp_path, "release")
        output, _ = second.communicate(timeout=60)
        assert second.returncode == 3 and f"pid {holder.pid} on host" in output and ".lock.held" in output, output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Nothing released the dead holder's file; its pid is gone on this host, so it is stale.
    third = _without_flock(tmp_path, "release")
    output, _ = third.communicate(timeout=60)
    assert third.returncode == 0, output
    assert f"took over {tmp_path / '.lock'} from pid {holder.pid}" in output and "released False" in output, output
    # Released cleanly: the next run takes it without a stale note.
    fourth = _without_flock(tmp_path, "release")
    output, _ = fourth.communicate(timeout=60)
    assert fourth.returncode == 0 and "None" in output.splitlines()[0], output


def test_without_flock_a_holder_on_another_host_is_stale_once_its_heartbeat_stops(tmp_path, monkeypatch):
    import errno
    import fcntl

    from seq2vae.train import run_lock

    def unsupported(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", unsupported)
    held = tmp_path / run_lock.FALLBACK_LOCK_FILENAME
    held.write_text(json.dumps({"host": "another-node", "pid": 4242, "started": "2026-12-03T00:00:00+00:00"}))
    with pytest.raises(RunDirectoryInUseError, match="pid 4242 on host another-node"):
        RunDirectoryLock(tmp_path).acquire()  # a fresh heartbeat: alive, as far as anyone here can tell
    old = time.time() - run_lock.STALE_AFTER_S - 60
    os.utime(held, (old, old))
    lock = RunDirectoryLock(tmp_path).acquire()
    assert lock.previous_holder["host"] == "another-node"
    assert json.loads(held.read_text())["pid"] == os.getpid()
    lock.release()
    assert not held.exists()


def _children(pid: int) -> list[int]:
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as stream:
            children += [int(child) for child in stream.read().split()]
    return children


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(condition, timeout: float, what: str, job) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert job.poll() is None, f"job A ended early while waiting for {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_second_run_refused_skips_counted_and_workers_die_with_torchrun(
    launch, shard_dir, tokenizer_dir, tmp_path, out_of_range_copy
):
    shards = tmp_path / "shards"
    bad_key = out_of_range_copy(shard_dir, shards, "train-000000.tar", 3, 5000)
    run_dir = tmp_path / "run"
    overrides = [
        f"data.train={shards}", f"model.tokenizer={tokenizer_dir}", f"run_dir={run_dir}", "data.on_corrupt=skip",
        "phases.0.steps=2000", "phases.1.steps=2000", "checkpoint.every_steps=100000", "validation.every_steps=0",
    ]
    config = launch.configs / "debug-zero2.yaml"
    job = subprocess.Popen(
        launch.command(launch.train_args(config, *overrides)), env=launch.env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    workers: list[int] = []
    try:
        _wait_for(lambda: len(launch.metrics(run_dir)) >= 1, 240, "job A's first metrics", job)
        workers = _children(job.pid)
        assert len(workers) == 2
        holder = json.loads((run_dir / ".lock").read_text())
        written = (run_dir / "config.yaml").read_bytes()

        second = launch.run(launch.train_args(config, *overrides), timeout=240)
        errors = [line for line in second.stderr.splitlines() if "seq2vae train: error: " in line]
        assert second.returncode != 0 and len(errors) == 1, launch.tail(second)
        assert "is in use by another run" in errors[0] and f"pid {holder['pid']} on host {holder['host']}" in errors[0]
        # torchrun prints its own ChildFailedError summary; our ranks print no traceback of their own.
        repository = re.escape(str(launch.configs.parent))
        assert "[rank" not in second.stderr and not re.search(f'File "{repository}/(?!\\.venv)', second.stderr)
        assert (run_dir / "config.yaml").read_bytes() == written

        # 540 train samples / (2 ranks x 8) = 33 steps an epoch; the bad sample is read in the first two.
        def skip_logged() -> bool:
            return any(record.get("data/skipped_samples", 0) >= 1 for record in launch.metrics(run_dir))

        _wait_for(skip_logged, 240, f"data/skipped_samples for {bad_key}", job)
        steps = [record["step"] for record in launch.metrics(run_dir)]
        assert steps == sorted(set(steps))  # one writer: no interleaved records

        job.send_signal(signal.SIGKILL)
        job.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "workers outlived their torchrun by 10 s"
    finally:
        for pid in [job.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
