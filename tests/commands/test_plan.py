"""`seq2vae plan` end to end: JSON shape, verdicts, recommendations, and `seq2vae slurm render` refusing."""

from __future__ import annotations

import json
import re

import pytest

from seq2vae.cli import main as seq2vae_main
from seq2vae.commands.plan import main as plan_main
from seq2vae.config import ConfigError
from seq2vae.slurm import JobOptions, render_job
from seq2vae.slurm.job_check import parse_sbatch_mem_gib

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"


def run_plan(capsys, *argv: str) -> tuple[int, dict]:
    code = plan_main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_json_shape_and_a_fitting_11b_run_on_four_nodes(backbone_dirs, capsys):
    code, plan = run_plan(
        capsys, "--config", str(REPO_CONFIGS / "flan-t5-xxl-zero3.yaml"), f"model.backbone={backbone_dirs['flan-t5-xxl']}",
        "deepspeed=zero3", "data.micro_batch_size=4", "--nodes", "4", "--gpus-per-node", "8", "--max-length", "256",
        "--gpu", "H100",
    )
    assert code == 0 and plan["fits"] is True and plan["problems"] == []
    assert 11.13e9 < plan["parameters"] < 11.14e9  # flan-t5-xxl with its untied LM head
    per_rank = plan["per_rank"]
    assert set(per_rank) >= {"model_states_bytes", "activation_bytes", "total_bytes"}
    assert per_rank["total_bytes"] == per_rank["model_states_bytes"] + per_rank["activation_bytes"]
    # ZeRO-3 on 32 ranks: parameter (2) + gradient (4) + master and moments (12) bytes per parameter / 32.
    partitioned = per_rank["parameter_bytes"] + per_rank["gradient_bytes"] + per_rank["optimizer_state_bytes"]
    assert abs(partitioned - 18 * plan["parameters"] / 32) < 0.001 * partitioned
    assert per_rank["activation_bytes_with_checkpointing"] < per_rank["activation_bytes_without_checkpointing"]
    assert plan["host_per_node_bytes"] > 0 and plan["communication"]["inter_node_bytes_per_rank_per_step"] > 0
    assert plan["peak_tflops"] == pytest.approx(989.4)
    recommendation = plan["recommendation"]
    assert recommendation["fits"] and recommendation["zero_stage"] == 3 and recommendation["zero_hpz_partition_size"] == 8
    # Global batch 512 on 32 ranks allows up to 16 sentences per rank without accumulation.
    assert recommendation["micro_batch_size"] == 16
    assert recommendation["overrides"] == ["deepspeed=zero3_hpz", "data.micro_batch_size=16"]


def test_a_run_that_cannot_fit_says_what_to_change(backbone_dirs, capsys):
    # 11B on one 80 GB GPU with ZeRO-1: 2 + 4 + 12 bytes per parameter = 198 GB.
    code, plan = run_plan(
        capsys, "--config", str(REPO_CONFIGS / "flan-t5-xxl-zero3.yaml"), f"model.backbone={backbone_dirs['flan-t5-xxl']}",
        "deepspeed=zero1", "data.global_batch_size=null", "--nodes", "1", "--gpus-per-node", "1", "--max-length", "128",
    )
    assert code == 1 and plan["fits"] is False
    # ZeRO-2 with the optimizer offloaded keeps only the bf16 parameters (22 GB) and buckets on the GPU.
    assert any("exceeds the usable" in problem and "deepspeed=zero2_offload" in problem for problem in plan["problems"])
    recommendation = plan["recommendation"]
    assert recommendation["zero_stage"] == 2 and recommendation["offload_optimizer"] and recommendation["fits"]
    code = seq2vae_main(["plan", "--config", str(REPO_CONFIGS / "flan-t5-xxl-zero3.yaml"), "data.micro_batch_size=0",
                         "--nodes", "1", "--gpus-per-node", "1"])
    assert code == 2 and "data.micro_batch_size" in capsys.readouterr().err


def test_text_report_names_the_verdict(backbone_dirs, capsys):
    code = plan_main(["--config", str(REPO_CONFIGS / "t5-base-recipe.yaml"), f"model.backbone={backbone_dirs['t5-base']}",
                      "--nodes", "1", "--gpus-per-node", "8", "--max-length", "128"])
    out = capsys.readouterr().out
    assert code == 0 and "fits: yes" in out and "parameters" in out and "recommendation: ZeRO-2" in out
    # Where `seq2vae eval --placement auto` would put the trained model (t5-base: a replica).
    assert "evaluation (seq2vae eval defaults: 1024 sequences x 128 tokens per decoder call):" in out
    assert "  fp32 weights (a run directory's export): replica," in out


def test_slurm_render_refuses_a_job_that_cannot_fit(backbone_dirs, tmp_path):
    config = REPO_CONFIGS / "flan-t5-xxl-zero3.yaml"
    backbone = f"model.backbone={backbone_dirs['flan-t5-xxl']}"
    options = dict(check_partition=False, output_dir=str(tmp_path / "logs"))
    with pytest.raises(ConfigError, match=r"cannot fit 1 node\(s\) x 1 GPU\(s\).*change: deepspeed=zero2_offload"):
        render_job("train", config, [backbone, "deepspeed=zero1", "data.global_batch_size=null"],
                   JobOptions(nodes=1, gpus_per_node=1, **options))
    job = render_job("train", config, [backbone], JobOptions(nodes=4, gpus_per_node=8, mem="512G", **options))
    assert "#SBATCH --nodes=4" in job.script
    # No save measured yet: the warning lead comes from the planned checkpoint, 14 bytes a parameter
    # (bf16 weights + fp32 master + AdamW moments) written at 1 GiB/s per node; on one node it tops the floor.
    job = render_job("train", config, [backbone], JobOptions(nodes=1, gpus_per_node=8, mem="1T", **options))
    planned = float(re.search(r"2 x the planned save \(([\d.]+) s at 1 GiB/s per node\)", job.script).group(1))
    assert 11e9 * 14 / 2**30 < planned < 11.5e9 * 14 / 2**30, planned
    lead = int(re.search(r"#SBATCH --signal=B:USR1@(\d+)", job.script).group(1))
    assert abs(lead - 2 * planned) <= 1, (lead, planned)  # `planned` is printed to 0.1 s
    # --mem bounds host memory: 8 ranks offloading 11B of optimizer state need more than 64 GB.
    with pytest.raises(ConfigError, match="host memory"):
        render_job("train", config, [backbone, "deepspeed=zero3_offload", "data.global_batch_size=null"],
                   JobOptions(nodes=1, gpus_per_node=8, mem="64G", **options))
    assert parse_sbatch_mem_gib("1T") == 1024 and parse_sbatch_mem_gib("65536") == 64
    with pytest.raises(ConfigError, match="--mem"):
        parse_sbatch_mem_gib("lots")
