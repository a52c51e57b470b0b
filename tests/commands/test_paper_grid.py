"""configs/paper/: the reference's grid renders for 1 and 8 ranks with phase 1 shared, and a tiny copy of
it (its first phase-1 row and two phase-2 rows that start from it) runs through `seq2vae sweep` on the
debug backbone: phase 1 trains once, both phase-2 rows start from its weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seq2vae.commands.sweep import plan_rows
from seq2vae.config import ConfigError
from seq2vae.slurm.options import JobOptions, resolve_layout
from seq2vae.slurm.render import sweep_rows
from seq2vae.slurm.run_config import TRAINER_MODULE
from seq2vae.slurm.sweep import read_sweep_table

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
TINY = [
    "model.backbone=debug-t5", "phases.0.steps=2", "phases.1.steps=2", "data.micro_batch_size=4",
    "data.global_batch_size=4", "data.num_workers=0", "checkpoint.every_steps=2", "validation.every_steps=0",
    "validation.max_batches=1", "validation.num_reconstructions=0", "logging.every_steps=1", "logging.progress_bar=false",
    "optim.lr=5e-3",  # so two phase-1 steps move the weights measurably
]
EVAL_ARGS = "--iw-samples 2 --max-sentences 8 --prior-samples 0 --interpolations 0 --max-reconstructions 0"


@pytest.mark.parametrize("world_size", [1, 8])
def test_the_paper_grid_renders_with_one_phase_1_per_setting(world_size):
    rows = plan_rows(PAPER / "base.yaml", PAPER / "grid.tsv", ["run_dir=runs/paper"], world_size)
    phase_1 = [row for row in rows if "phases.1.steps=0" in row.overrides]
    sources = {item.split("=", 1)[1] for row in rows for item in row.overrides if item.startswith("model.init_from=")}
    assert [row.index for row in phase_1] == [0, 1, 2, 3]
    assert sources == {str(row.run_dir) for row in phase_1}  # every phase-1 row is used, and only those
    settings = [tuple(sorted(i for i in row.overrides if not i.startswith("run_dir="))) for row in phase_1]
    assert len(set(settings)) == len(settings)  # distinct phase-1 settings: none runs twice
    assert [row.total_steps for row in rows] == [11730] * 4 + [7820] * 12
    big = [row for row in rows if "model.backbone=t5-base" in row.overrides]
    assert [row.index for row in big] == [3, 12] and "model.init_from=runs/paper/task-3" in big[1].overrides


def test_a_row_cannot_start_from_a_row_that_runs_after_it(tmp_path):
    table = tmp_path / "grid.tsv"
    table.write_text("phases.0.steps\tmodel.init_from\n0\t{run_dir}/task-1\n2\t\n")
    layout = resolve_layout(JobOptions(device="cpu", ranks_per_node=1))
    with pytest.raises(ConfigError, match="row 0: model.init_from names row 1's run directory"):
        sweep_rows(PAPER / "base.yaml", ["run_dir=r"], read_sweep_table(table), TRAINER_MODULE, layout, table)


@pytest.mark.slow
def test_a_tiny_paper_sweep_runs_phase_1_once_and_starts_phase_2_from_it(shard_dir, tokenizer_dir, launch, tmp_path):
    lines = (PAPER / "grid.tsv").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    body = [line for line in lines[header + 1 :] if line and not line.startswith("#")]
    table = tmp_path / "grid.tsv"
    # Phase 1 without denoising, rows 4 and 7 that start from it, and the vanilla row 13 (no phase 1).
    table.write_text("\n".join([lines[header], body[0], body[4], body[7], body[13]]) + "\n")
    root = tmp_path / "runs"
    done = launch.seq2vae("sweep", str(table), "--config", str(PAPER / "base.yaml"), "--output-root", str(root),
                          "--eval-args", EVAL_ARGS, f"data.train={shard_dir}", f"model.tokenizer={tokenizer_dir}", *TINY,
                          timeout=1200)
    assert done.returncode == 0, launch.tail(done)
    for index in range(4):
        assert (root / f"task-{index}" / "eval.json").is_file()
    for index in (1, 2):
        assert f"init_from: {root / 'task-0'}" in (root / f"task-{index}" / "config.yaml").read_text()

    def first_steps(index: int) -> list[dict]:
        return [json.loads(line) for line in (root / f"task-{index}" / "metrics.jsonl").read_text().splitlines()]

    # Phase 1 ran once, in task-0 (beta 0); the phase-2 rows ran their VAE phase alone (beta ramps to 0.1).
    assert [row["train/beta"] for row in first_steps(0)] == [0.0, 0.0]
    assert [row["train/beta"] for row in first_steps(1)] == [0.0, pytest.approx(0.05)]
    # All rows start from the same seeded weights and see the same first batch: the vanilla row's first
    # loss equals phase 1's, and the phase-2 rows', which start from phase 1's trained weights, differ.
    phase_1, from_phase_1, vanilla = (first_steps(i)[0]["train/recon"] for i in (0, 1, 3))
    assert vanilla == pytest.approx(phase_1, rel=1e-5)
    assert abs(from_phase_1 - phase_1) > 1e-3 * abs(phase_1)
    assert first_steps(2)[0]["train/recon"] == pytest.approx(from_phase_1, rel=1e-5)
