"""Rendered jobs running the real trainer on a real one-node SLURM: tiny debug-t5, ZeRO-2, 2 CPU ranks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.cpp_extension import get_default_build_root

# DeepSpeed's CPU communication op, as the other training tests build it (once per machine): the jobs'
# default node-local directory would build it again, minutes on a loaded 2-core machine.
# (test_job_mechanics checks that the default reaches the ranks.)
TORCH_EXTENSIONS = str(Path(get_default_build_root()) / f"py{sys.version_info.major}{sys.version_info.minor}_cpu")

pytestmark = pytest.mark.slow  # training jobs on a real one-node SLURM cluster


def submit(cluster, config: Path, *args: str, ranks: int = 2) -> str:
    result = cluster.seq2vae_slurm(
        "submit", "--config", str(config), "--device", "cpu", "--ranks-per-node", str(ranks),
        "--output-dir", str(config.parent / "logs"), "--torch-extensions-dir", TORCH_EXTENSIONS, *args,
    )
    return result.stdout.strip()


def logged_steps(run_dir: Path) -> tuple[list[int], list[int]]:
    """Steps in metrics.jsonl, and steps of the train/loss scalar in the TensorBoard events."""
    metrics = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return metrics, sorted(event.step for event in events.Scalars("train/loss"))


def latest_checkpoint(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


def test_training_job_writes_checkpoints_and_tensorboard_then_an_eval_job_scores_it(
    slurm_cluster, write_train_config, tmp_path
):
    config = write_train_config(tmp_path, steps=6, checkpoint_every=3)
    job_id = submit(slurm_cluster, config, "--cpus-per-task", "2")
    (job,) = slurm_cluster.wait_until_done(job_id, timeout=300)
    (log,) = (tmp_path / "logs").glob("*.out")
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log.read_text() + slurm_cluster.explain(job_id)
    run_dir = tmp_path / "run"
    assert latest_checkpoint(run_dir) == "step_00000006"
    assert (run_dir / "checkpoints" / "step_00000003").is_dir()
    metrics, tensorboard = logged_steps(run_dir)
    assert metrics == tensorboard == [1, 2, 3, 4, 5, 6]

    # Two ranks: rank 0 exports the run once to RUN_DIR/export/<tag>, then both ranks load it.
    eval_id = submit(slurm_cluster, config, "--kind", "eval", "--eval-args", "--iw-samples 5 --max-sentences 16")
    (job,) = slurm_cluster.wait_until_done(eval_id, timeout=300)
    log = next((tmp_path / "logs").glob(f"*-{eval_id}.out")).read_text()
    assert job["JobState"] == "COMPLETED", log + slurm_cluster.explain(eval_id)
    result = json.loads((run_dir / f"eval-{eval_id}.json").read_text())
    assert result["iw_samples"] == 5 and result["split"] == "valid" and result["metrics"]
    assert result["model_kind"] == "run export step_00000006"
    assert (run_dir / "export" / "step_00000006" / "vae_config.json").is_file()


def test_preempted_training_saves_requeues_and_resumes(slurm_cluster, write_train_config, tmp_path):
    steps = 40  # ~0.3 s a step on CPU: time enough to signal it mid-run
    config = write_train_config(tmp_path, steps=steps, checkpoint_every=1000)
    run_dir = tmp_path / "run"
    job_id = submit(slurm_cluster, config, "--cpus-per-task", "2", "--max-restarts", "1")
    metrics = run_dir / "metrics.jsonl"
    slurm_cluster.wait_until(
        lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, "training to take steps", timeout=300
    )
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job_id)
    slurm_cluster.wait_for(job_id, lambda jobs: jobs[0]["Restarts"] == "1" and jobs[0]["JobState"] == "PENDING", "the requeue")
    saved = latest_checkpoint(run_dir)
    saved_step = int(saved.split("_")[1])
    assert 2 <= saved_step < steps, saved

    (job,) = slurm_cluster.wait_until_done(job_id, timeout=300)
    (log,) = (tmp_path / "logs").glob("*.out")
    text = log.read_text()
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", text + slurm_cluster.explain(job_id)
    assert f"requeueing {job_id} (restart 1 of 1)" in text
    assert any("resumed from" in line and saved in line and f"at step {saved_step}" in line for line in text.splitlines()), text
    assert latest_checkpoint(run_dir) == f"step_{steps:08d}"
    # Every step logged exactly once across the two runs: the second run continued where the first saved.
    metrics_steps, tensorboard_steps = logged_steps(run_dir)
    assert metrics_steps == list(range(1, steps + 1))
    assert sorted(set(tensorboard_steps)) == list(range(1, steps + 1))


def test_sweep_trains_each_row_in_its_own_run_directory(slurm_cluster, write_train_config, tmp_path):
    config = write_train_config(tmp_path, steps=4, checkpoint_every=1000)
    table = tmp_path / "sweep.tsv"
    table.write_text("optim.lr\tmodel.latent_dim\n1e-4\t16\n3e-4\t8\n")
    array_id = submit(slurm_cluster, config, "--kind", "sweep", "--sweep", str(table), "--cpus-per-task", "1")
    jobs = slurm_cluster.wait_until_done(array_id, timeout=360)
    assert sorted(job["ArrayTaskId"] for job in jobs) == ["0", "1"]
    assert all(job["JobState"] == "COMPLETED" for job in jobs), slurm_cluster.explain(array_id)
    for index, (lr, latent_dim) in enumerate([(1e-4, 16), (3e-4, 8)]):
        run_dir = tmp_path / "run" / f"task-{index}"
        resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert resolved["optim"]["lr"] == lr and resolved["model"]["latent_dim"] == latent_dim
        assert latest_checkpoint(run_dir) == "step_00000004"
        assert logged_steps(run_dir)[1] == [1, 2, 3, 4]
    assert sorted(path.name.rsplit("_", 1)[1] for path in (tmp_path / "logs").glob("*.out")) == ["0.out", "1.out"]


def test_a_sweep_row_that_starts_from_another_row_waits_for_it_through_a_requeue(slurm_cluster, write_train_config, tmp_path):
    steps = 40  # ~0.3 s a step: time enough to preempt the first wave mid-run
    config = write_train_config(tmp_path, steps=steps, checkpoint_every=1000)
    table = tmp_path / "sweep.tsv"
    table.write_text(f"phases.0.steps\tmodel.init_from\n{steps}\t\n2\t{{run_dir}}/task-0\n")
    first_id, second_id = submit(slurm_cluster, config, "--kind", "sweep", "--sweep", str(table), "--cpus-per-task", "2",
                                 "--max-restarts", "1").split()
    (pending,) = slurm_cluster.job_fields(second_id)
    assert pending["JobState"] == "PENDING" and pending["Dependency"].startswith(f"afterok:{first_id}"), pending
    # A requeue is not an end: the second wave keeps waiting while the first resumes.
    run_dir = tmp_path / "run"
    metrics = run_dir / "task-0" / "metrics.jsonl"
    slurm_cluster.wait_until(
        lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, "the first wave to take steps", timeout=300
    )
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", f"{first_id}_0")
    slurm_cluster.wait_for(first_id, lambda jobs: jobs[0]["Restarts"] == "1", "the requeue")
    (first,) = slurm_cluster.wait_until_done(first_id, timeout=360)
    (second,) = slurm_cluster.wait_until_done(second_id, timeout=360)
    states = first["JobState"], second["JobState"]
    assert states == ("COMPLETED", "COMPLETED"), slurm_cluster.explain(first_id) + slurm_cluster.explain(second_id)
    assert first["Restarts"] == "1"
    # Each wave's array task id is its row: task-<i> run directories and logs, as one array would have.
    assert (first["ArrayTaskId"], second["ArrayTaskId"]) == ("0", "1")
    assert second["StartTime"] >= first["EndTime"], (first, second)  # ISO timestamps: ordered as strings
    assert latest_checkpoint(run_dir / "task-0") == f"step_{steps:08d}"
    assert latest_checkpoint(run_dir / "task-1") == "step_00000002"
    (log,) = (tmp_path / "logs").glob(f"*-{second_id}_1.out")
    assert f"initial weights from model.init_from={run_dir / 'task-0'} (latest checkpoint step_{steps:08d})" in log.read_text()


@pytest.mark.slow
def test_training_at_its_time_limit_saves_on_term_requeues_and_matches_an_uninterrupted_run(
    slurm_cluster, write_train_config, tmp_path
):
    # One-minute runs with no warning signal: each run trains until SLURM's TERM at the limit, saves
    # within KillWait, requeues itself and the next resumes; more steps than one minute holds. (An idle
    # 2-core machine trains about 12 steps/s here: 300 steps finished inside the first minute.)
    steps = 1000
    limited, reference = tmp_path / "limited", tmp_path / "reference"
    limited.mkdir()
    reference.mkdir()
    config = write_train_config(limited, steps=steps, checkpoint_every=1000)
    job_id = submit(slurm_cluster, config, "--cpus-per-task", "2", "--time", "1", "--signal-seconds", "0", "--max-restarts", "12")
    (job,) = slurm_cluster.wait_until_done(job_id, timeout=1800)
    (log,) = (limited / "logs").glob("*.out")
    text = log.read_text()
    restarts = int(job["Restarts"])
    assert job["JobState"] == "COMPLETED" and restarts >= 1, text + slurm_cluster.explain(job_id)
    # SLURM's TERM at the limit reached the batch script, which asked every rank to save (the ranks
    # got TERM from SLURM too; the trainer all-reduces the stop, so one rank's signal stops all).
    assert text.count("TERM: asking every rank to save and stop") >= restarts, text
    assert text.count("stopped by TERM (job COMPLETING TimeLimit) after saving; requeueing") == restarts, text
    resumed_at = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if "resumed from" in line and " at step " in line]
    assert len(resumed_at) == restarts and resumed_at == sorted(resumed_at) and 0 < resumed_at[0] < steps, text
    run_dir = limited / "run"
    timing = json.loads((run_dir / "checkpoints" / "save_timing.json").read_text())
    assert timing["step"] == steps and timing["save_seconds"] > 0

    config = write_train_config(reference, steps=steps, checkpoint_every=1000)
    job_id = submit(slurm_cluster, config, "--cpus-per-task", "2")
    (job,) = slurm_cluster.wait_until_done(job_id, timeout=600)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "0", slurm_cluster.explain(job_id)
    # Every step once, and the same losses as the run that was never stopped.
    expected, got = (
        [json.loads(line) for line in (directory / "run" / "metrics.jsonl").read_text().splitlines()]
        for directory in (reference, limited)
    )
    assert [m["step"] for m in got] == list(range(1, steps + 1))
    for key in ("train/loss", "train/recon", "train/kl", "train/grad_norm"):
        assert [m[key] for m in got] == [m[key] for m in expected], key
