"""Rendering: what the sbatch scripts ask for, and the requests the renderer refuses (no SLURM needed)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from seq2vae.cli import main as seq2vae_main
from seq2vae.config import ConfigError
from seq2vae.slurm import JobOptions, read_sweep_table, render_job
from seq2vae.slurm.cli import main as slurm_main
from seq2vae.slurm.signal_lead import SAVE_TIMING_FILE, checkpoint_write_seconds, signal_lead

STAND_IN = "stand_in_trainer"  # any module other than seq2vae.train: the YAML is read as plain data


# Rendering is checked on its own here: GPU requests skip the partition query (check_partition=False),
# which test_job_mechanics.py runs against the local SLURM.


def write_config(directory: Path, micro: int = 4, global_batch: int | None = 16, run_dir: str = "runs/demo") -> Path:
    path = directory / "demo.yaml"
    path.write_text(yaml.safe_dump({"run_dir": run_dir, "data": {"micro_batch_size": micro, "global_batch_size": global_batch}}))
    return path


def sbatch_options(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)", script, flags=re.MULTILINE))


def bash_syntax_ok(script: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_single_node_cpu_job_asks_for_preemption_handling(tmp_path):
    config = write_config(tmp_path, micro=4, global_batch=16)
    options = JobOptions(device="cpu", ranks_per_node=2, cpus_per_task=2, mem="4G", partition="debug", time="01:00:00",
                         output_dir=str(tmp_path / "logs"), module=STAND_IN, max_restarts=5, signal_seconds=120)
    job = render_job("train", config, ["optim.lr=3e-4", "note=two words"], options)
    sbatch = sbatch_options(job.script)
    assert sbatch["nodes"] == "1" and sbatch["ntasks-per-node"] == "1"
    assert "gpus-per-node" not in sbatch
    assert sbatch["cpus-per-task"] == "2" and sbatch["mem"] == "4G" and sbatch["partition"] == "debug"
    assert sbatch["signal"] == "B:USR1@120" and "requeue" in sbatch and sbatch["open-mode"] == "append"
    assert sbatch["output"] == f"{tmp_path / 'logs'}/%x-%j.out"
    assert "NPROC_PER_NODE=2" in job.script and "MAX_RESTARTS=5" in job.script
    assert "export DS_ACCELERATOR=cpu" in job.script
    assert f"CONFIG={config.resolve()}" in job.script
    assert "OVERRIDES=(optim.lr=3e-4 'note=two words')" in job.script
    assert f"launch_torchrun -m {STAND_IN} --config \"$CONFIG\" --resume auto" in job.script
    assert "{{" not in job.script
    bash_syntax_ok(job.script, tmp_path)


def test_multi_node_gpu_job_runs_one_torchrun_per_node(tmp_path):
    config = write_config(tmp_path, micro=4, global_batch=256)
    options = JobOptions(nodes=4, gpus_per_node=8, check_partition=False, account="proj", qos="high", constraint="h100",
                         module=STAND_IN, sbatch_lines=["exclusive", "#SBATCH --mail-type=END", "--gres=nvme:1"],
                         setup_lines=["module load cuda/12.4"])
    job = render_job("train", config, [], options)
    sbatch = sbatch_options(job.script)
    assert sbatch["nodes"] == "4" and sbatch["gpus-per-node"] == "8" and sbatch["ntasks-per-node"] == "1"
    assert sbatch["account"] == "proj" and sbatch["qos"] == "high" and sbatch["constraint"] == "h100"
    assert "exclusive" in sbatch and sbatch["mail-type"] == "END" and sbatch["gres"] == "nvme:1"
    assert "NPROC_PER_NODE=8" in job.script and "DS_ACCELERATOR" not in job.script
    assert "\nmodule load cuda/12.4\n" in job.script
    # Rendezvous on the allocation's first node, keyed by the job id.
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in job.script
    assert '--rdzv_backend c10d --rdzv_endpoint "$2" --rdzv_id "$SLURM_JOB_ID"' in job.script
    bash_syntax_ok(job.script, tmp_path)


def test_eval_job_evaluates_the_run_of_a_training_config(tmp_path):
    pytest.importorskip("seq2vae.train.config")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"run_dir": "runs/t", "data": {"train": "shards/a"}}))
    job = render_job("eval", config, ["data.valid=shards/b"], JobOptions(device="cpu", eval_args="--iw-samples 500"))
    sbatch = sbatch_options(job.script)
    assert "requeue" not in sbatch and "signal" not in sbatch
    assert "\nRUN_DIR=runs/t\n" in job.script
    assert (
        'launch_torchrun -m seq2vae eval --model "$RUN_DIR" --data shards/b --split valid '
        '--output "$RUN_DIR/eval-$SLURM_JOB_ID.json" --iw-samples 500 --device cpu'
    ) in job.script
    bash_syntax_ok(job.script, tmp_path)


def test_sweep_gives_each_task_its_row_run_dir_and_log(tmp_path):
    config = write_config(tmp_path, run_dir="runs/sweep")
    table = tmp_path / "lrs.tsv"
    table.write_text("# learning rates\noptim.lr\tmodel.latent_dim\n1e-4\t16\n\n3e-4\t\n")
    job = render_job("sweep", config, [], JobOptions(device="cpu", module=STAND_IN, max_parallel=1), sweep_table=table)
    sbatch = sbatch_options(job.script)
    assert sbatch["array"] == "0-1%1" and job.array_size == 2
    assert sbatch["output"].endswith("/%x-%A_%a.out")
    assert "    0) ROW=(optim.lr=1e-4 model.latent_dim=16 run_dir=runs/sweep/task-0) ;;" in job.script
    assert "    1) ROW=(optim.lr=3e-4 run_dir=runs/sweep/task-1) ;;" in job.script
    assert 'JOB_REF="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in job.script
    bash_syntax_ok(job.script, tmp_path)


@pytest.mark.parametrize(
    "options, message",
    [
        (JobOptions(device="cpu", gpus_per_node=2), "--gpus-per-node 2 on a CPU-only job"),
        (JobOptions(device="cuda", gpus_per_node=0), "--gpus-per-node 0 on a CUDA job"),
        (JobOptions(gpus_per_node=4, ranks_per_node=2), "one rank per GPU"),
        (JobOptions(nodes=0), "--nodes must be >= 1"),
        (JobOptions(device="cpu", max_restarts=-1), "--max-restarts must be >= 0"),
        (JobOptions(device="cpu", sbatch_lines=[""]), "expected an sbatch option"),
        (JobOptions(device="cpu", setup_lines=["a\nb"]), "one line per option"),
        (JobOptions(device="cpu", partition="has space"), "whitespace is not allowed"),
    ],
)
def test_impossible_requests_are_refused(tmp_path, options, message):
    config = write_config(tmp_path)
    options.module, options.check_partition = STAND_IN, False
    with pytest.raises(ConfigError, match=re.escape(message)):
        render_job("train", config, [], options)


def test_global_batch_must_divide_by_micro_batch_times_world_size(tmp_path):
    config = write_config(tmp_path, micro=4, global_batch=24)
    # 4 x (2 nodes x 2 ranks) = 16 does not divide 24; 4 x 2 = 8 does.
    with pytest.raises(ConfigError, match=r"data.global_batch_size': 24 is not a multiple of .* 4 x 4 = 16"):
        render_job("train", config, [], JobOptions(device="cpu", nodes=2, ranks_per_node=2, module=STAND_IN))
    render_job("train", config, [], JobOptions(device="cpu", nodes=1, ranks_per_node=2, module=STAND_IN))
    # An override that breaks it is caught too.
    with pytest.raises(ConfigError, match="data.global_batch_size"):
        render_job("train", config, ["data.global_batch_size=20"], JobOptions(device="cpu", ranks_per_node=2, module=STAND_IN))


def test_trainer_configs_are_validated_by_the_trainer_loader(tmp_path):
    pytest.importorskip("seq2vae.train.config")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"run_dir": "runs/t",
                                      "data": {"train": "shards", "micro_batch_size": 4, "global_batch_size": 12}}))
    with pytest.raises(ConfigError, match="data.global_batch_size"):
        render_job("train", config, [], JobOptions(device="cpu", ranks_per_node=2))
    with pytest.raises(ConfigError, match="optim.lrr"):
        render_job("train", config, ["optim.lrr=1"], JobOptions(device="cpu", ranks_per_node=1))
    assert "seq2vae.train --config" in render_job("train", config, [], JobOptions(device="cpu", ranks_per_node=1)).script


def test_missing_config_and_bad_sweep_tables_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' does not exist"):
        render_job("train", tmp_path / "nope.yaml", [], JobOptions(device="cpu"))
    config = write_config(tmp_path)
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("optim.lr\tseed\n1e-4\n")
    with pytest.raises(ConfigError, match=r"ragged.tsv:2: 1 tab-separated cells, but the header names 2 keys"):
        read_sweep_table(ragged)
    shared = tmp_path / "shared.tsv"
    shared.write_text("run_dir\nruns/a\nruns/a\n")
    with pytest.raises(ConfigError, match="rows 0 and 1 share run_dir 'runs/a'"):
        render_job("sweep", config, [], JobOptions(device="cpu", module=STAND_IN), sweep_table=shared)
    with pytest.raises(ConfigError, match="--sweep TABLE.tsv is required"):
        render_job("sweep", config, [], JobOptions(device="cpu", module=STAND_IN))


def test_cli_render_prints_the_script_and_reports_errors(tmp_path, capsys):
    config = write_config(tmp_path)
    logs = tmp_path / "logs"
    code = slurm_main(["render", "--config", str(config), "--device", "cpu", "--ranks-per-node", "2", "--module", STAND_IN,
                       "--output-dir", str(logs), "--setup", "source venv/bin/activate", "--sbatch-line", "exclusive",
                       "optim.lr=1e-4"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("#!/bin/bash\n#SBATCH --job-name=seq2vae-train-demo\n")
    assert "OVERRIDES=(optim.lr=1e-4)" in out and "#SBATCH --exclusive" in out
    assert logs.is_dir()  # sbatch would not create it
    code = seq2vae_main(["slurm", "render", "--config", str(config), "--device", "cpu", "--gpus-per-node", "1",
                         "--module", STAND_IN])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "error: --gpus-per-node 1 on a CPU-only job" in captured.err


def test_cli_help_lists_every_job_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        slurm_main(["render", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ("--nodes", "--gpus-per-node", "--cpus-per-task", "--mem", "--partition", "--account", "--qos", "--time",
                 "--constraint", "--sbatch-line", "--setup", "--output-dir", "--max-restarts", "--max-parallel", "--sweep",
                 "--cpus-per-gpu", "--mem-per-gpu", "--exclusive", "--requeue-on-failure"):
        assert flag in out


def exported(script: str) -> dict[str, str]:
    """`export NAME=VALUE` lines of a script (value as written, comment dropped)."""
    return {name: value.split("  #")[0] for name, value in re.findall(r"^export (\w+)=(.*)$", script, flags=re.MULTILINE)}


@pytest.mark.parametrize("nodes", [1, 4])
def test_gpu_jobs_get_cpus_memory_and_a_per_rank_environment(tmp_path, nodes):
    config = write_config(tmp_path, micro=4, global_batch=4 * nodes * 8)
    logs = tmp_path / "logs"
    options = JobOptions(nodes=nodes, gpus_per_node=8, check_partition=False, module=STAND_IN, output_dir=str(logs),
                         requeue_on_failure=2, setup_lines=["export OMP_NUM_THREADS=2"])
    job = render_job("train", config, [], options)
    sbatch = sbatch_options(job.script)
    # Per node: 8 CPUs and 64G per GPU by default; one task per node hosts torchrun and its 8 ranks.
    assert sbatch["nodes"] == str(nodes) and sbatch["ntasks-per-node"] == "1" and sbatch["gpus-per-node"] == "8"
    assert sbatch["cpus-per-task"] == "64" and sbatch["mem"] == "512G" and "exclusive" not in sbatch
    # srun gets the CPUs explicitly (Slurm >= 22.05 does not inherit them), and so does any other srun.
    assert 'CPUS_PER_NODE=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}' in job.script
    assert 'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="$CPUS_PER_NODE" --kill-on-bad-exit=1' in job.script
    env = exported(job.script)
    assert env["SRUN_CPUS_PER_TASK"] == "$CPUS_PER_NODE"
    assert "OMP_NUM_THREADS=$(( CPUS_PER_NODE / NPROC_PER_NODE ))" in job.script and "export OMP_NUM_THREADS" in job.script
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["TORCH_EXTENSIONS_DIR"] == '"${SLURM_TMPDIR:-/tmp/$(id -un)}/torch_extensions"'
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    # NCCL: abort on a timed-out collective after dumping the flight recorder next to the rank logs.
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3" and env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    assert int(env["TORCH_NCCL_TRACE_BUFFER_SIZE"]) > 0
    assert env["TORCH_FR_DUMP_TEMP_FILE"] == '"$JOB_LOG_DIR/nccl-trace-rank-"'
    # Rank 0 of each node in the job log, labelled with its global rank; every rank in its own file.
    assert env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "'[rank${rank}]:'"
    assert f'JOB_LOG_DIR={logs}/"${{SLURM_JOB_NAME}}-${{JOB_REF}}"' in job.script
    assert '--log-dir "$3/node-$SLURM_NODEID" --tee 3 --local-ranks-filter 0 "${@:4}"' in job.script
    assert "REQUEUE_ON_FAILURE=2" in job.script
    # The setup lines come after the defaults, so they can override them.
    assert job.script.index("export OMP_NUM_THREADS\n") < job.script.index("export OMP_NUM_THREADS=2")
    bash_syntax_ok(job.script, tmp_path)


def test_explicit_resources_and_exclusive_nodes_override_the_gpu_defaults(tmp_path):
    config = write_config(tmp_path, micro=4, global_batch=16)
    explicit = render_job("train", config, [], JobOptions(gpus_per_node=4, cpus_per_task=20, mem="200G", check_partition=False,
                                                          module=STAND_IN))
    assert sbatch_options(explicit.script)["cpus-per-task"] == "20" and sbatch_options(explicit.script)["mem"] == "200G"
    per_gpu = render_job("train", config, [], JobOptions(gpus_per_node=4, cpus_per_gpu=12, mem_per_gpu="100g",
                                                         check_partition=False, module=STAND_IN))
    assert sbatch_options(per_gpu.script)["cpus-per-task"] == "48" and sbatch_options(per_gpu.script)["mem"] == "400G"
    whole = sbatch_options(render_job("train", config, [], JobOptions(gpus_per_node=4, exclusive=True, check_partition=False,
                                                                      module=STAND_IN)).script)
    # All of each node: SLURM's --mem=0; the CPUs come from SLURM_CPUS_ON_NODE in the script.
    assert "exclusive" in whole and whole["mem"] == "0" and "cpus-per-task" not in whole
    # CPU jobs keep SLURM's defaults unless asked, and carry no NCCL settings.
    cpu = render_job("train", config, [], JobOptions(device="cpu", ranks_per_node=2, module=STAND_IN))
    assert "cpus-per-task" not in sbatch_options(cpu.script) and "mem" not in sbatch_options(cpu.script)
    assert "TORCH_NCCL" not in cpu.script and "export HF_HUB_OFFLINE=1" in cpu.script
    with pytest.raises(ConfigError, match=r"--mem-per-gpu '64 GB': expected a whole number"):
        render_job("train", config, [], JobOptions(gpus_per_node=4, mem_per_gpu="64 GB", check_partition=False, module=STAND_IN))
    with pytest.raises(ConfigError, match="--requeue-on-failure must be >= 0"):
        render_job("train", config, [], JobOptions(device="cpu", requeue_on_failure=-1, module=STAND_IN))


def test_warning_lead_comes_from_the_last_measured_save(tmp_path):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path, run_dir=str(run_dir))
    options = JobOptions(device="cpu", module=STAND_IN, output_dir=str(tmp_path / "logs"))
    # No save yet: the floor.
    job = render_job("train", config, [], options)
    assert sbatch_options(job.script)["signal"] == "B:USR1@120"
    assert "# warning lead: 120 s, no save measured or planned yet: the floor" in job.script
    # A run whose last save took 170 s after a 9.5 s step: 2 x 170 + 9.5, rounded up.
    (run_dir / "checkpoints").mkdir(parents=True)
    timing = run_dir / "checkpoints" / SAVE_TIMING_FILE
    timing.write_text(json.dumps({"step": 400, "save_seconds": 170.0, "step_seconds": 9.5}))
    job = render_job("train", config, [], options)
    assert sbatch_options(job.script)["signal"] == "B:USR1@350"
    assert "2 x the last save (170.0 s at step 400) + a step (9.5 s)" in job.script
    # A quick save stays at the floor; an explicit lead wins; 0 asks for no warning (TERM only).
    timing.write_text(json.dumps({"step": 400, "save_seconds": 3.0, "step_seconds": 0.5}))
    assert sbatch_options(render_job("train", config, [], options).script)["signal"] == "B:USR1@120"
    explicit = render_job("train", config, [], dataclasses.replace(options, signal_seconds=900))
    assert sbatch_options(explicit.script)["signal"] == "B:USR1@900"
    silent = render_job("train", config, [], dataclasses.replace(options, signal_seconds=0))
    assert "signal" not in sbatch_options(silent.script) and "requeue" in sbatch_options(silent.script)
    assert "# warning lead: none (TERM at the time limit only)" in silent.script
    bash_syntax_ok(silent.script, tmp_path)
    # A damaged record is named, not ignored.
    timing.write_text("{")
    with pytest.raises(ConfigError, match=re.escape(str(timing))):
        render_job("train", config, [], options)


def test_sweep_warning_lead_is_the_slowest_tasks(tmp_path):
    config = write_config(tmp_path, run_dir=str(tmp_path / "run"))
    table = tmp_path / "sweep.tsv"
    table.write_text("optim.lr\n1e-4\n3e-4\n")
    slow = tmp_path / "run" / "task-1" / "checkpoints"
    slow.mkdir(parents=True)
    (slow / SAVE_TIMING_FILE).write_text(json.dumps({"step": 10, "save_seconds": 100.0, "step_seconds": 1.0}))
    job = render_job("sweep", config, [], JobOptions(device="cpu", module=STAND_IN), sweep_table=table)
    assert sbatch_options(job.script)["signal"] == "B:USR1@201"


def test_planned_save_time_assumes_a_write_speed_per_node():
    # 11B parameters in bf16 plus fp32 AdamW states (2 + 12 bytes each) at 1 GiB/s per node.
    seconds = checkpoint_write_seconds(14 * 11_000_000_000, nodes=4)
    assert seconds == pytest.approx(14 * 11e9 / 4 / 2**30)  # 35.9 s
    assert signal_lead(None, seconds).seconds == 120  # the floor
    one_node = checkpoint_write_seconds(14 * 11_000_000_000, nodes=1)
    assert signal_lead(None, one_node).seconds == math.ceil(2 * one_node) == 287


def test_the_renderer_reads_the_save_timing_file_the_trainer_writes():
    from seq2vae.checkpoint.saving import SAVE_TIMING_FILE as WRITTEN

    assert SAVE_TIMING_FILE == WRITTEN
