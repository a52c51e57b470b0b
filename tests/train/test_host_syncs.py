"""Steps that do not wait on the host: outside logging, validation and save steps, seq2vae's own code
makes no host-device sync (counted by bench/step_probe.py around the real Trainer; DeepSpeed's and
transformers' own are reported, not ours to remove)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[2] / "bench" / "step_probe.py"


def _probe_steps(launch, data_overrides, run_dir: Path, preset: str) -> tuple[dict, dict[int, dict]]:
    out = run_dir.with_suffix(".json")
    overrides = [
        *data_overrides, f"run_dir={run_dir}", "resume=never", "phases.0.steps=2", "phases.1.steps=6",
        "logging.every_steps=4", "checkpoint.every_steps=100", "validation.every_steps=0", "validation.max_batches=1",
        "validation.num_reconstructions=0", f"deepspeed={preset}",
    ]
    done = subprocess.run([sys.executable, str(PROBE), str(out), str(launch.configs / "debug-zero2.yaml"), *overrides],
                          env=launch.env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, launch.tail(done)
    report = json.loads(out.read_text())
    return report, {step["step"]: step for step in report["steps"]}


@pytest.mark.slow
def test_plain_steps_make_no_host_sync_of_our_own(launch, data_overrides, tmp_path):
    report, steps = _probe_steps(launch, data_overrides, tmp_path / "zero2", "zero2")
    plain = [number for number, step in steps.items() if step["plain"] and number > 1]
    assert plain == [3, 5, 6, 7], steps  # 2: end-of-phase save; 4, 8: logging (8: final save and validation)
    # Step 3 opens phase 2: the gradient check of a phase's first step (model/invariants.py) reads each
    # group's gradients once, on purpose; every other plain step reads nothing.
    assert [steps[number]["own_syncs"] for number in (5, 6, 7)] == [0, 0, 0], report["sync_callers"]
    assert steps[3]["own_syncs"] > 0, report["sync_callers"]
    # Without ZeRO (what `deepspeed: auto` runs on one fp32 rank) the step guard's finiteness read is
    # the step's one sync, ours now, in place of ZeRO's overflow check.
    single_report, single = _probe_steps(launch, data_overrides, tmp_path / "single", "single")
    assert [single[number]["own_syncs"] for number in (5, 6, 7)] == [1, 1, 1], single_report["sync_callers"]
    guard = {caller: n for caller, n in single_report["sync_callers"].items() if caller.startswith("guarded_step.py:")}
    assert list(guard.values()) == [8], single_report["sync_callers"]  # one place, once a step
    # The counter sees reads where they are: logging steps read the loss parts, grad norm, mu and KL.
    assert steps[4]["own_syncs"] >= 3 and steps[8]["own_syncs"] > steps[4]["own_syncs"], steps
    # Loss parts kept on the device still reach the summary as the last step's numbers.
    assert set(report["losses"]) == {"loss", "recon", "kl", "kl_thresholded", "beta"}
    assert all(math.isfinite(value) for value in report["losses"].values())
