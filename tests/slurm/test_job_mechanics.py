"""Job mechanics on a real one-node SLURM, with a stand-in trainer (same flags and signal contract).

What is checked: a rendered 2-rank job runs to the end, its ranks get the environment the script sets
(threads from the allocation, offline hub, node-local extensions) and each writes its own log while
rank 0 also writes to the job log; the restart limit holds; a job that fails requeues itself (capped)
and resumes from its latest checkpoint; in a 2-task sweep
each task runs its own row, and when one task is warned, only its ranks get the signal (each
exactly once; torchrun survives it), they save, the task requeues itself and its next run resumes
from the saved step; a job stopped with `scancel` saves on SLURM's TERM and is not requeued.
(test_training_jobs.py repeats the preemption with the real trainer, and tests the time limit with it
only: a job at its limit saves on TERM, requeues and matches an uninterrupted run.)
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
import yaml

STAND_IN = "stand_in_trainer"

pytestmark = pytest.mark.slow  # jobs on a real one-node SLURM cluster


def stand_in_config(directory: Path, steps: int, step_seconds: float, **stand_in) -> Path:
    path = directory / "stand_in.yaml"
    settings = {"steps": steps, "step_seconds": step_seconds, **stand_in}
    path.write_text(yaml.safe_dump({"run_dir": str(directory / "run"), "stand_in": settings}))
    return path


def events(run_dir: Path, **match) -> list[dict]:
    path = run_dir / "events.jsonl"
    found = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in found if all(e.get(key) == value for key, value in match.items())]


def submit(cluster, config: Path, stand_in_setup: list[str], *args: str) -> str:
    setup = [item for line in stand_in_setup for item in ("--setup", line)]
    result = cluster.seq2vae_slurm(
        "submit", "--config", str(config), "--module", STAND_IN, "--device", "cpu", "--ranks-per-node", "2",
        "--output-dir", str(config.parent / "logs"), *setup, *args,
    )
    return result.stdout.strip()


def the_log(config: Path) -> str:
    (log,) = (config.parent / "logs").glob("*.out")
    return log.read_text()


def test_two_rank_job_completes(slurm_cluster, stand_in_setup, tmp_path):
    config = stand_in_config(tmp_path, steps=4, step_seconds=0.1)
    job_id = submit(slurm_cluster, config, stand_in_setup, "--cpus-per-task", "2")
    (job,) = slurm_cluster.wait_until_done(job_id)
    log = the_log(config)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log + slurm_cluster.explain(job_id)
    run_dir = tmp_path / "run"
    assert [e["world_size"] for e in events(run_dir, event="start")] == [2, 2]
    assert sorted(e["rank"] for e in events(run_dir, event="done", step=4)) == [0, 1]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000004"
    assert "finished with exit status 0" in log
    # 2 CPUs for 2 ranks: one OpenMP thread each, set by the script (not torchrun's default).
    for start in events(run_dir, event="start"):
        environment = start["environment"]
        assert environment["OMP_NUM_THREADS"] == "1" and environment["PYTHONUNBUFFERED"] == "1", environment
        assert environment["HF_HUB_OFFLINE"] == "1" and environment["TRANSFORMERS_OFFLINE"] == "1", environment
        assert environment["TORCH_EXTENSIONS_DIR"] == f"/tmp/{pwd.getpwuid(os.getuid()).pw_name}/torch_extensions", environment
    assert "per node: 2 CPUs, OMP_NUM_THREADS=1 per rank" in log
    # Rank 0 in the job log, labelled; each rank's whole output in its own file under the log directory.
    assert "[rank0]:stand-in rank 0 starts at step 0" in log and "stand-in rank 1" not in log
    rank_logs = {path.parent.name: path.read_text()
                 for path in (tmp_path / "logs").glob(f"*-{job_id}/node-0/*/attempt_0/*/stdout.log")}
    assert sorted(rank_logs) == ["0", "1"], rank_logs
    assert all(f"stand-in rank {rank} starts at step 0" in rank_logs[rank] for rank in rank_logs)


def test_restart_limit_stops_requeueing(slurm_cluster, stand_in_setup, tmp_path):
    config = stand_in_config(tmp_path, steps=200, step_seconds=0.25)
    run_dir = tmp_path / "run"
    job_id = submit(slurm_cluster, config, stand_in_setup, "--cpus-per-task", "2", "--max-restarts", "0")
    slurm_cluster.wait_until(lambda: len(events(run_dir, event="start")) == 2, "both ranks to start")
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job_id)
    (job,) = slurm_cluster.wait_until_done(job_id)
    log = the_log(config)
    assert job["Restarts"] == "0" and job["ExitCode"] == "75:0", log + slurm_cluster.explain(job_id)
    assert "restart limit reached (0 of 0): not requeueing" in log
    assert len(events(run_dir, event="saved")) == 2 and not events(run_dir, event="done")


def test_failed_jobs_requeue_up_to_the_limit_and_resume(slurm_cluster, stand_in_setup, tmp_path):
    # Rank 1 crashes at step 3 in the first run (failing_runs=1) or in every run (failing_runs=9);
    # checkpoints every 2 steps, so a requeued run resumes at step 2.
    jobs = {}
    for name, failing_runs in (("once", 1), ("always", 9)):
        directory = tmp_path / name
        directory.mkdir()
        config = stand_in_config(directory, steps=6, step_seconds=0.2, save_every=2, fail_at_step=3, failing_runs=failing_runs)
        jobs[name] = (config, submit(slurm_cluster, config, stand_in_setup, "--cpus-per-task", "1", "--requeue-on-failure", "1"))

    config, job_id = jobs["once"]
    (job,) = slurm_cluster.wait_until_done(job_id)
    log, run_dir = the_log(config), config.parent / "run"
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log + slurm_cluster.explain(job_id)
    assert "(failure 1 of 1 requeued); requeueing" in log and "finished with exit status 0" in log
    assert [e["rank"] for e in events(run_dir, event="crash", restart=0)] == [1]
    assert [e["step"] for e in events(run_dir, event="start", restart=1)] == [2, 2]
    assert sorted(e["rank"] for e in events(run_dir, event="done", step=6, restart=1)) == [0, 1]
    (failures,) = (config.parent / "logs").glob(f"*-{job_id}/failed-runs")
    assert len(failures.read_text().splitlines()) == 1

    config, job_id = jobs["always"]
    (job,) = slurm_cluster.wait_until_done(job_id)
    log = the_log(config)
    assert job["JobState"] == "FAILED" and job["Restarts"] == "1", log + slurm_cluster.explain(job_id)
    assert "failure requeue limit reached (1 of 1): not requeueing" in log
    assert len(events(config.parent / "run", event="crash")) == 2


def test_sweep_runs_each_row_and_requeues_only_the_preempted_task(slurm_cluster, stand_in_setup, tmp_path):
    config = stand_in_config(tmp_path, steps=0, step_seconds=0.25)
    table = tmp_path / "sweep.tsv"
    table.write_text("stand_in.steps\tstand_in.tag\n12\tfirst\n24\tsecond\n")
    array_id = submit(slurm_cluster, config, stand_in_setup, "--kind", "sweep", "--sweep", str(table), "--cpus-per-task", "1")
    task_dirs = [tmp_path / "run" / f"task-{i}" for i in range(2)]
    slurm_cluster.wait_until(lambda: len(events(task_dirs[1], event="start")) == 2, "task 1 to start")
    # What SLURM does at `--signal=B:USR1@N` before the time limit, or on preemption with a grace time.
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", f"{array_id}_1")
    slurm_cluster.wait_for(f"{array_id}_1", lambda jobs: jobs[0]["Restarts"] == "1", "task 1 to requeue")
    jobs = slurm_cluster.wait_until_done(array_id)

    by_task = {job["ArrayTaskId"]: job for job in jobs}
    assert sorted(by_task) == ["0", "1"]
    assert all(job["JobState"] == "COMPLETED" for job in jobs), slurm_cluster.explain(array_id)
    assert by_task["0"]["Restarts"] == "0" and by_task["1"]["Restarts"] == "1"
    # The warning reached task 1's ranks only (task 0 may hold the array's job id, which scancel
    # would take for the whole array), each exactly once: forwarded by the batch script, ignored by torchrun.
    assert not events(task_dirs[0], event="signal")
    assert sorted((e["rank"], tuple(e["signals"])) for e in events(task_dirs[1], event="signal")) == [
        (0, ("SIGUSR1",)), (1, ("SIGUSR1",))
    ]
    # Both ranks saved the same step, and the requeued run started from it.
    saved_steps = {e["step"] for e in events(task_dirs[1], event="saved", restart=0)}
    assert len(saved_steps) == 1 and 0 < min(saved_steps) < 24
    assert [e["step"] for e in events(task_dirs[1], event="start", restart=1)] == [min(saved_steps)] * 2
    for task_dir, steps, tag in zip(task_dirs, (12, 24), ("first", "second")):
        assert sorted(e["rank"] for e in events(task_dir, event="done", step=steps)) == [0, 1]
        assert all(f"stand_in.tag={tag}" in e["overrides"] for e in events(task_dir, event="start"))
    logs = {path.name.rsplit("_", 1)[1]: path.read_text() for path in (tmp_path / "logs").glob("*.out")}
    assert sorted(logs) == ["0.out", "1.out"]
    assert "sweep row 0: stand_in.steps=12 stand_in.tag=first" in logs["0.out"]
    # Tasks that may share a node rendezvous on different ports.
    ports = {name: next(line for line in log.splitlines() if "rendezvous" in line).rsplit(":", 1)[1]
             for name, log in logs.items()}
    assert ports["0.out"] != ports["1.out"]


def test_gpu_request_on_a_cpu_only_partition_is_refused(slurm_cluster, tmp_path):
    config = stand_in_config(tmp_path, steps=1, step_seconds=0.1)
    result = slurm_cluster.seq2vae_slurm(
        "render", "--config", str(config), "--module", STAND_IN, "--gpus-per-node", "2", "--partition", "debug", check=False
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "partition 'debug' is CPU-only (sinfo reports GRES (null))" in result.stderr


@pytest.mark.slow
def test_cancelled_job_saves_on_term_and_is_not_requeued(slurm_cluster, stand_in_setup, tmp_path):
    config = stand_in_config(tmp_path, steps=400, step_seconds=0.25)
    run_dir = tmp_path / "run"
    job_id = submit(slurm_cluster, config, stand_in_setup, "--cpus-per-task", "2", "--max-restarts", "3")
    slurm_cluster.wait_until(lambda: len(events(run_dir, event="start")) == 2, "both ranks to start")
    slurm_cluster.run("scancel", job_id)
    (job,) = slurm_cluster.wait_until_done(job_id)
    log = the_log(config)
    assert job["JobState"] == "CANCELLED" and job["Restarts"] == "0", log + slurm_cluster.explain(job_id)
    assert "cancelled; saved, not requeueing" in log
    assert len({e["step"] for e in events(run_dir, event="saved")}) == 1 and not events(run_dir, event="done")
