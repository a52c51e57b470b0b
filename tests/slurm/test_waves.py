"""Sweep waves: rows that start from other rows' weights become later, dependent arrays (no SLURM needed).

The real-SLURM run of a 2-wave sweep is in test_training_jobs.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from seq2vae.config import ConfigError
from seq2vae.slurm import JobOptions, render_job, render_sweep
from seq2vae.slurm.cli import main as slurm_main
from seq2vae.slurm.waves import SweepWave, array_spec, sweep_waves

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
STAND_IN = "stand_in_trainer"  # any module other than seq2vae.train: the YAML is read as plain data


def _config(directory: Path) -> Path:
    path = directory / "demo.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "runs/w", "data": {"micro_batch_size": 4}}))
    return path


def _array(script: str) -> str:
    return re.search(r"^#SBATCH --array=(\S+)$", script, flags=re.MULTILINE).group(1)


def test_waves_follow_the_init_from_chains():
    # rows 0 and 3 start from nothing, 1 and 4 from 0, 2 from 1 (a chain), 5 from 3.
    waves = sweep_waves([None, 0, 1, None, 0, 3])
    assert waves == [SweepWave(0, (0, 3), (), 3), SweepWave(1, (1, 4, 5), (0,), 3), SweepWave(2, (2,), (1,), 3)]
    assert sweep_waves([None, None]) == [SweepWave(0, (0, 1), (), 1)]
    assert [array_spec(rows) for rows in ([0], [0, 1, 2, 5, 7, 8], [4, 5, 6, 7, 8, 9, 10, 11, 12])] == ["0", "0-2,5,7-8", "4-12"]


def test_the_paper_grid_submits_phase_2_after_phase_1(tmp_path):
    jobs = render_sweep(PAPER / "base.yaml", ["run_dir=runs/paper"], JobOptions(device="cpu", ranks_per_node=1),
                        PAPER / "grid.tsv")
    assert [job.wave for job in jobs] == [SweepWave(0, (0, 1, 2, 3, 13, 14, 15), (), 2),
                                         SweepWave(1, tuple(range(4, 13)), (0,), 2)]
    first, second = (job.script for job in jobs)
    assert (_array(first), _array(second)) == ("0-3,13-15", "4-12")
    # The case statement holds the wave's rows under their table index, run directories as in one array.
    assert "    4) ROW=(" in second and "run_dir=runs/paper/task-4)" in second and "    0) ROW=(" not in second
    assert "model.init_from=runs/paper/task-1" in second and "# wave 2 of 2 (rows 4-12)" in second
    with pytest.raises(ConfigError, match=r"rows 4, 5, .* start from other rows' weights, so it runs as 2 dependent arrays"):
        render_job("sweep", PAPER / "base.yaml", ["run_dir=runs/paper"], JobOptions(device="cpu", ranks_per_node=1),
                   PAPER / "grid.tsv")


@pytest.mark.parametrize(
    "body, message",
    [
        ("0\t{run_dir}/task-1\n2\t\n", "row 0: model.init_from names row 1's run directory, which comes after it"),
        ("2\t\n0\t{run_dir}/task-1/\n", "row 1: model.init_from names its own run directory"),
        # A cycle needs a row that starts from a later one: its first row is the one named.
        ("0\t{run_dir}/task-1\n0\t{run_dir}/task-0\n", "row 0: model.init_from names row 1's run directory"),
    ],
)
def test_a_row_starting_from_itself_or_a_later_row_is_refused_by_row(tmp_path, body, message):
    table = tmp_path / "t.tsv"
    table.write_text("stand_in.steps\tmodel.init_from\n" + body)
    with pytest.raises(ConfigError, match=f"sweep table '{re.escape(str(table))}', {re.escape(message)}"):
        render_sweep(_config(tmp_path), [], JobOptions(device="cpu", module=STAND_IN), table)


def test_render_prints_one_script_per_wave(tmp_path, capsys):
    table = tmp_path / "t.tsv"
    table.write_text("stand_in.steps\tmodel.init_from\n2\t\n2\t{run_dir}/task-0\n")
    code = slurm_main(["render", "--config", str(_config(tmp_path)), "--kind", "sweep", "--sweep", str(table), "--device", "cpu",
                       "--module", STAND_IN, "--output-dir", str(tmp_path / "logs")])
    out, err = capsys.readouterr()
    assert code == 0 and "runs as 2 arrays, one per wave" in err
    scripts = out.split("#!/bin/bash\n")[1:]
    assert [_array(script) for script in scripts] == ["0", "1"]
