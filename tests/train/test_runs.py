"""Real 2-process torchrun training runs on CPU (gloo) for ZeRO-2, ZeRO-3 and no ZeRO (stage 0, the
`single` preset `deepspeed: auto` picks for one fp32 rank; two ranks here so that the probe can put a
non-finite gradient on one rank only: the step guard must drop the step on both).

Runs are shared between assertions through module-scoped fixtures: per stage, one uninterrupted
run, one run stopped mid-phase and resumed, and one engine probe (tests/train/engine_probe.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STAGES = ["zero2", "zero3", "single"]
ZERO_STAGE = {"zero2": 2, "zero3": 3, "single": 0}
TOTAL_STEPS = 12  # configs/debug-zero*.yaml: 4 autoencoder steps (decoder frozen) + 8 VAE steps
STOP_AT = 6  # inside phase 2, after the phase switch, between two periodic checkpoints

pytestmark = pytest.mark.slow  # 2-rank torchrun training runs


@pytest.fixture(scope="module", params=STAGES)
def stage_runs(request, data_overrides, launch, tmp_path_factory):
    """(stage, uninterrupted run dir, stopped-and-resumed run dir, probe out dir) for one ZeRO stage."""
    stage = request.param
    root = tmp_path_factory.mktemp(f"runs-{stage}")
    config = CONFIGS / ("debug-zero2.yaml" if stage == "single" else f"debug-{stage}.yaml")
    data_overrides = [*data_overrides, f"deepspeed={stage}"]
    full, resumed, probe = root / "full", root / "resumed", root / "probe"
    probe.mkdir()
    done = launch.run(launch.train_args(config, *data_overrides, f"run_dir={full}"))
    assert done.returncode == 0, launch.tail(done)
    first = launch.run(launch.train_args(config, *data_overrides, f"run_dir={resumed}", f"stop_at_step={STOP_AT}"))
    assert first.returncode == 0, launch.tail(first)
    second = launch.run(launch.train_args(config, *data_overrides, f"run_dir={resumed}", "--resume", "auto"))
    assert second.returncode == 0, launch.tail(second)
    assert f"resumed from {resumed / 'checkpoints' / f'step_{STOP_AT:08d}'}" in second.stdout + second.stderr
    probe_config = probe / "config.yaml"
    from seq2vae.config import save_config
    from seq2vae.train.config import load_train_config

    save_config(load_train_config(config, [*data_overrides, f"run_dir={probe / 'run'}"]), probe_config)
    probed = launch.run([str(launch.probe), str(probe_config), str(probe)])
    assert probed.returncode == 0, launch.tail(probed)
    return stage, full, resumed, probe


def test_loss_decreases(stage_runs, launch):
    _, full, _, _ = stage_runs
    metrics = launch.metrics(full)
    assert [m["step"] for m in metrics] == list(range(1, TOTAL_STEPS + 1))
    recon = [m["train/recon"] for m in metrics]
    assert sum(recon[-3:]) / 3 < 0.9 * sum(recon[:3]) / 3, recon


def test_run_dir_is_self_describing(stage_runs):
    stage, full, _, _ = stage_runs
    from seq2vae.train.config import load_train_config

    saved = load_train_config(full / "config.yaml")
    assert saved.deepspeed == stage and saved.run_dir == str(full)
    ds_config = json.loads((full / "ds_config.json").read_text())
    assert ds_config["train_batch_size"] == saved.data.micro_batch_size * 2
    assert ds_config["zero_optimization"]["stage"] == ZERO_STAGE[stage]
    assert "auto" not in json.dumps(ds_config)
    checkpoints = full / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step_{TOTAL_STEPS:08d}"
    assert len(list(checkpoints.glob("step_*"))) == saved.checkpoint.keep_last


def test_resumed_run_reproduces_the_uninterrupted_losses(stage_runs, launch):
    _, full, resumed, _ = stage_runs
    expected, got = launch.metrics(full), launch.metrics(resumed)
    assert [m["step"] for m in got] == list(range(1, TOTAL_STEPS + 1))
    for key in ("train/loss", "train/recon", "train/kl", "train/beta", "train/lr", "train/grad_norm"):
        assert [m[key] for m in got] == [m[key] for m in expected], key
    validated = [(full / "validation.jsonl"), (resumed / "validation.jsonl")]
    expected_steps, got_steps = ([json.loads(line)["step"] for line in path.read_text().splitlines()] for path in validated)
    assert got_steps == expected_steps and expected_steps, (got_steps, expected_steps)


def test_frozen_decoder_is_bit_identical_and_its_adam_state_untouched(stage_runs):
    _, _, _, probe = stage_runs
    report = json.loads((probe / "probe.json").read_text())
    assert report["decoder_unchanged_phase1"] is True
    assert report["encoder_changed_phase1"] is True
    phase1_steps = 4
    assert set(report["adam_steps_phase1"]["decoder"]) == {0.0}
    assert set(report["adam_steps_phase1"]["encoder"]) == {float(phase1_steps)}
    # Phase 2: the decoder trains from fresh Adam state; one step of three was skipped (NaN on one rank).
    assert report["decoder_changed_phase2"] is True
    assert set(report["adam_steps_phase2"]["decoder"]) == {2.0}
    assert set(report["adam_steps_phase2"]["encoder"]) == {float(phase1_steps + 2)}


def test_non_finite_loss_on_one_rank_skips_the_step_on_all(stage_runs):
    _, _, _, probe = stage_runs
    report = json.loads((probe / "probe.json").read_text())
    assert report["nan_step_skipped"] is True
    assert report["nan_step_weights_unchanged"] is True
    assert report["total_skips"] == 1


def test_a_step_deepspeed_drops_with_finite_losses_counts_as_skipped_on_all_ranks(stage_runs):
    _, _, _, probe = stage_runs
    report = json.loads((probe / "probe.json").read_text())
    # Finite losses (the trainer's own check passed: not "skipped" by it), non-finite gradients on rank
    # 1: DeepSpeed applied no step on either rank, and both count it, after the NaN step before it.
    expected = {"skipped": True, "dropped_by_deepspeed": True, "applied": False, "total_skips": 2}
    assert report["dropped_step_per_rank"] == [expected, expected]
    assert report["dropped_step_weights_unchanged"] is True


def test_export_then_from_pretrained_gives_the_same_outputs(stage_runs, tmp_path):
    _, _, _, probe = stage_runs
    from seq2vae.checkpoint.export import main as export_main
    from seq2vae.model import Seq2SeqVAE

    assert export_main([str(probe / "run"), "--output", str(tmp_path / "exported")]) == 0
    vae = Seq2SeqVAE.from_pretrained(tmp_path / "exported").eval()
    reference = torch.load(probe / "reference.pt", weights_only=False)
    batch = reference["batch"]
    with torch.no_grad():
        output = vae(batch["input_ids"], batch["attention_mask"], batch["labels"], sample=False)
    torch.testing.assert_close(output.mu, reference["mu"], rtol=0, atol=1e-5)
    torch.testing.assert_close(output.recon_nll, reference["recon_nll"], rtol=1e-5, atol=1e-4)


def test_tensorboard_has_every_section_and_resume_appends_to_one_run(stage_runs):
    _, _, resumed, _ = stage_runs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    expected = {
        "train/loss", "train/recon", "train/kl", "train/kl_thresholded", "train/beta", "train/lr",
        "train/grad_norm", "train/skipped_steps", "data/skipped_samples", "latent/active_units", "perf/tokens_per_s",
        "perf/samples_per_s", "perf/data_wait_share", "perf/step_time", "memory/max_rss_gib",
        "eval/recon_nll", "eval/kl", "eval/neg_elbo", "eval/iw_nll", "eval/mi_dataset", "eval/active_units",
    }
    assert expected <= scalars, expected - scalars
    assert {"latent/mu", "latent/kl_per_dim"} <= set(tags["histograms"])
    assert any(tag.startswith("eval/reconstructions") for tag in tags["tensors"])
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == list(range(1, TOTAL_STEPS + 1))  # the resumed process appended, no duplicates


# ------------------------------------------------------------------------------ faults and launch modes
def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _start_long_run(launch, config: Path, overrides: list[str], run_dir: Path) -> subprocess.Popen:
    args = launch.train_args(config, *overrides, f"run_dir={run_dir}", "phases.1.steps=5000", "checkpoint.every_steps=10000")
    return subprocess.Popen(
        launch.command(args), env=launch.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_steps(launch, process: subprocess.Popen, run_dir: Path, steps: int, timeout: float = 180) -> list[int]:
    """Waits until rank 0 logged `steps` steps; returns the worker pids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0][-6000:]
        if len(launch.metrics(run_dir)) >= steps:
            workers = _children(process.pid)
            assert len(workers) == 2, workers
            return workers
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"no {steps} steps logged within {timeout}s")


def test_sigusr1_to_one_rank_saves_and_exits_every_rank_with_75(data_overrides, launch, tmp_path):
    from seq2vae.checkpoint.saving import SAVE_TIMING_FILE
    from seq2vae.train.signals import REQUEUE_EXIT_CODE

    run_dir = tmp_path / "preempted"
    # Validation at every step: the stop is acted on before it, so the stopping step has none.
    overrides = [*data_overrides, "validation.every_steps=1", "validation.max_batches=1"]
    process = _start_long_run(launch, CONFIGS / "debug-zero2.yaml", overrides, run_dir)
    workers = _wait_for_steps(launch, process, run_dir, steps=6)
    os.kill(workers[1], signal.SIGUSR1)
    output, _ = process.communicate(timeout=180)
    exit_codes = [int(line.split(":")[1].split()[0]) for line in output.splitlines() if line.strip().startswith("exitcode")]
    assert process.returncode != 0, output[-6000:]
    assert sorted(exit_codes) == [REQUEUE_EXIT_CODE, REQUEUE_EXIT_CODE], output[-6000:]
    last_step = launch.metrics(run_dir)[-1]["step"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{last_step:08d}"
    assert last_step < 4 + 5000
    # Our own line says what torchrun's "FAILED" means, once (rank 0).
    assert output.count(f"seq2vae train: preempted at step {last_step}: checkpoint") == 1, output[-6000:]
    validated = [json.loads(line)["step"] for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    assert validated == list(range(1, last_step)), validated
    # The save measured itself for the SLURM warning lead.
    timing = json.loads((run_dir / "checkpoints" / SAVE_TIMING_FILE).read_text())
    assert timing["step"] == last_step and timing["save_seconds"] > 0 and timing["step_seconds"] > 0, timing


def test_a_killed_rank_ends_the_job_with_an_error(data_overrides, launch, tmp_path):
    run_dir = tmp_path / "killed"
    process = _start_long_run(launch, CONFIGS / "debug-zero3.yaml", data_overrides, run_dir)
    workers = _wait_for_steps(launch, process, run_dir, steps=3)
    os.kill(workers[0], signal.SIGKILL)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the job hung after one rank was killed")
    assert process.returncode != 0, output[-6000:]


def test_two_node_rendezvous_on_loopback_with_gradient_accumulation(data_overrides, launch, tmp_path):
    run_dir = tmp_path / "two-nodes"
    port = launch.free_port()
    args = launch.train_args(
        CONFIGS / "debug-zero2.yaml", *data_overrides, f"run_dir={run_dir}", "phases.1.steps=2", "data.global_batch_size=32"
    )
    nodes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--node_rank", str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                "--rdzv_id", "seq2vae-test", *args,
            ],
            env=launch.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-4000:] for o in outputs)
    assert [m["step"] for m in launch.metrics(run_dir)] == list(range(1, 4 + 2 + 1))
    ds_config = json.loads((run_dir / "ds_config.json").read_text())
    assert (ds_config["train_batch_size"], ds_config["gradient_accumulation_steps"]) == (32, 2)  # 8 x 2 accum x 2 nodes
    metrics = launch.metrics(run_dir)
    assert all(m["perf/samples_per_s"] > 0 and m["train/loss"] == m["train/loss"] for m in metrics)


def test_single_process_without_torchrun_through_the_seq2vae_command(data_overrides, launch, tmp_path):
    run_dir = tmp_path / "single"
    args = ["train", "--config", str(CONFIGS / "debug-zero2.yaml"), *data_overrides, f"run_dir={run_dir}",
            "phases.0.steps=2", "phases.1.steps=2", "--resume", "never"]
    done = launch.seq2vae(*args)
    assert done.returncode == 0, launch.tail(done)
    assert [m["step"] for m in launch.metrics(run_dir)] == [1, 2, 3, 4]
    assert json.loads((run_dir / "ds_config.json").read_text())["train_batch_size"] == 8  # a world of one
