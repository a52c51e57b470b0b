"""bench/gpu_smoke.sh cannot rot: its CPU dry run (same script, tiny model) and its offline wheel set."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_carried_wheels_cover_every_requirement(tmp_path):
    smoke = load_bench("gpu_smoke")
    assert smoke.check_wheels() == []
    # The check itself can fail: a wheel set missing pydantic-core, or holding two hjson versions.
    broken = tmp_path / "wheels"
    shutil.copytree(smoke.WHEELS, broken)
    next(broken.glob("pydantic_core-*.whl")).unlink()
    hjson = next(broken.glob("hjson-*.whl"))
    shutil.copy(hjson, broken / hjson.name.replace("3.1.0", "3.0.2"))
    problems = smoke.check_wheels(broken)
    assert any("pydantic-core" in problem and "neither" in problem for problem in problems), problems
    assert any("second version of hjson" in problem for problem in problems), problems


def test_host_sync_counter_counts_device_reads_not_the_data_pipeline():
    import torch

    from seq2vae.data.collate import collate

    probe = load_bench("step_probe")
    loss = torch.tensor([1.5, 2.5])
    with probe.HostSyncCounter() as counter:
        float(loss.sum())
        loss.tolist()
        if loss.max() > 2:  # __bool__
            pass
        collate([{"input_ids": [5, 6, 1]}, {"input_ids": [7, 1]}], pad_token_id=0)  # host-side: not counted
        with counter.paused():
            loss.sum().item()
    assert counter.count == 3, dict(counter.by_caller)
    assert torch.Tensor.item is not None and "counted" not in torch.Tensor.item.__qualname__  # restored


@pytest.mark.slow
def test_dry_run_of_the_smoke_script(tmp_path):
    out = tmp_path / "smoke"
    environment = {**os.environ, "SMOKE_BUDGET_S": "420"}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_smoke.sh"), "--dry-run", str(out)],
                          capture_output=True, text=True, env=environment, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "datasets imported: False" in (out / "versions.txt").read_text()
    results = json.loads((out / "results.json").read_text())
    assert [run["preset"] for run in results["runs"]] == ["zero2", "zero3"]
    for run in results["runs"]:
        assert run["status"] == "ok", run
        assert run["perf/tokens_per_s"] > 0 and run["memory/peak_allocated_gib"] > 0
        assert run["planned_total_gib"] > 0, run.get("plan_error")
        probe = run["probe"]
        assert probe["measured_steps"] == 3 and probe["status"] == "completed"
        split = probe["split_s_per_step"]
        assert all(split[key] > 0 for key in ("forward", "backward", "optimizer", "data", "step")), split
        assert split["forward"] + split["backward"] < split["step"] * 1.05, split
        assert 0 <= probe["padding_share"] < 0.2  # length-bucketed batches
        assert probe["plain_steps"] >= 1 and probe["own_syncs_per_step_max"] == 0, probe["sync_callers"]
        assert probe["own_syncs_per_logging_step_median"] > 0  # logging steps read the device: counted
        assert len(probe["save_s"]) >= 1
    table = (out / "results.md").read_text()
    assert "| zero2 | ok |" in table and "| zero3 | ok |" in table
