"""checkpoint.keep_best: the best-validation checkpoint, named by checkpoints/best (issue 20).

The selection rule on a controlled metric sequence, the pointer and pruning on plain directories, and
real 2-rank runs on the debug backbone: phase 1 improves the validation reconstruction, then a VAE
phase at beta 30 makes it rise, so `best` must stay on the last phase-1 validation while later saves
prune around it, a run stopped after the best and resumed must keep it, and `model.init_from` must
start from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from seq2vae.checkpoint.saving import (
    BEST_FILE,
    LATEST_FILE,
    _prune,
    best_checkpoint,
    named_checkpoint,
    set_best_pointer,
)
from seq2vae.config import ConfigError
from seq2vae.train.config import CheckpointConfig, load_train_config
from seq2vae.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _tracker(metric: str, keep_best: bool = True) -> SimpleNamespace:
    """The parts of a Trainer `track_best` reads."""
    config = SimpleNamespace(checkpoint=CheckpointConfig(keep_best=keep_best, best_metric=metric))
    return SimpleNamespace(config=config, best=None, step=0, monitor=SimpleNamespace(message=lambda text: None))


@pytest.mark.parametrize(
    "metric, values, improved",
    [
        ("recon_nll", [5.0, 4.0, 4.5, 4.0, 3.0, float("nan"), 3.5], [True, True, False, False, True, False, False]),
        ("active_units", [3, 5, 5, 4, 6], [True, True, False, False, True]),  # higher is better
    ],
)
def test_best_moves_only_on_a_strict_improvement(metric, values, improved):
    tracker = _tracker(metric)
    seen = []
    for step, value in enumerate(values, start=1):
        tracker.step = step
        seen.append(Trainer.track_best(tracker, {f"eval/{metric}": value, "eval/kl": 1.0}))
    assert seen == improved
    best_step = max(step for step, moved in enumerate(improved, start=1) if moved)
    assert tracker.best == {"metric": metric, "value": values[best_step - 1], "step": best_step}


def test_without_keep_best_or_without_validation_nothing_is_tracked():
    off = _tracker("recon_nll", keep_best=False)
    assert not Trainer.track_best(off, {"eval/recon_nll": 1.0}) and off.best is None
    on = _tracker("recon_nll")
    assert not Trainer.track_best(on, None) and on.best is None  # validation disabled: no valid split


def test_an_unknown_best_metric_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="key 'checkpoint.best_metric'.*'loss' is not a validation metric"):
        load_train_config(CONFIGS / "debug-zero2.yaml", ["checkpoint.best_metric=loss"])


def test_pruning_keeps_the_best_and_the_pointers_resolve(tmp_path):
    for step in (2, 4, 6, 8, 10):
        (tmp_path / f"step_{step:08d}").mkdir()
    (tmp_path / LATEST_FILE).write_text("step_00000010\n")
    set_best_pointer(tmp_path, "step_00000004")
    _prune(tmp_path, keep_last=2, keep=tmp_path / "step_00000010")
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000004", "step_00000008", "step_00000010"]
    assert best_checkpoint(tmp_path) == tmp_path / "step_00000004"
    assert named_checkpoint(tmp_path, "best") == tmp_path / "step_00000004"
    assert named_checkpoint(tmp_path, "latest") == tmp_path / "step_00000010"
    assert named_checkpoint(tmp_path, "step_00000008") == tmp_path / "step_00000008"
    with pytest.raises(FileNotFoundError, match="'step_00000006' not found; available: step_00000004"):
        named_checkpoint(tmp_path, "step_00000006")
    set_best_pointer(tmp_path, None)
    assert not (tmp_path / BEST_FILE).exists() and best_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoints/best file"):
        named_checkpoint(tmp_path, "best")


# ------------------------------------------------------------------------------ real runs
# 6 autoencoder steps (validation recon falls), then 6 VAE steps at beta 30 (it jumps, then falls back
# towards the best: by step 14 the decoder would have learned to do without z and gone below it). A
# constant lr, so the steps do not depend on the run's length. Validation every 2 steps, periodic
# saves every 5: the improving validations at steps 2 and 4 save checkpoints of their own, step 6 is
# the phase's end. keep_last 2, so the best (step 6) outlives its turn.
RUN = [
    "phases.0.steps=6", "phases.1.steps=6", "optim.lr=0.05", "optim.warmup_steps=0", "optim.schedule=constant",
    "phases.1.beta.kind=constant", "phases.1.beta.value=30", "phases.1.free_bits=0",
    "validation.every_steps=2", "validation.max_batches=1", "validation.iw_samples=1", "validation.num_reconstructions=0",
    "checkpoint.every_steps=5", "checkpoint.keep_last=2", "checkpoint.keep_best=true",
]
BEST = 6
STOP_AT = 11  # after the best and two validations that did not beat it


def _validations(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "validation.jsonl").read_text().splitlines()
    return {record["step"]: record["eval/recon_nll"] for record in map(json.loads, lines)}


def _train(launch, data_overrides, run_dir: Path, *extra: str):
    done = launch.run(launch.train_args(CONFIGS / "debug-zero2.yaml", *data_overrides, *RUN, f"run_dir={run_dir}", *extra))
    assert done.returncode == 0, launch.tail(done)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def best_runs(data_overrides, launch, tmp_path_factory):
    """(uninterrupted run dir, its output, stopped-and-resumed run dir, output of the resumed half)."""
    root = tmp_path_factory.mktemp("best-runs")
    full, resumed = root / "full", root / "resumed"
    full_output = _train(launch, data_overrides, full)
    _train(launch, data_overrides, resumed, f"stop_at_step={STOP_AT}")
    output = _train(launch, data_overrides, resumed, "--resume", "auto")
    return full, full_output, resumed, output


@pytest.mark.slow
def test_best_names_the_lowest_validation_and_survives_pruning(best_runs):
    full, output, _, _ = best_runs
    validations = _validations(full)
    assert sorted(validations) == [2, 4, 6, 8, 10, 12]
    # Phase 1 improved at every validation; the VAE phase's were all worse, so the pointer stayed.
    assert min(validations, key=validations.get) == BEST, validations
    moved = [int(line.split(":")[0].split()[-1]) for line in output.splitlines() if "best validation recon_nll" in line]
    assert moved == [2, 4, 6], output[-3000:]
    checkpoints = full / "checkpoints"
    assert (checkpoints / BEST_FILE).read_text().strip() == "step_00000006"
    assert (checkpoints / LATEST_FILE).read_text().strip() == "step_00000012"
    # The saves at 10 and 12 pruned everything older than the newest two, but not the best.
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000006", "step_00000010", "step_00000012"]
    assert (checkpoints / "step_00000006" / "manifest.json").is_file()  # sealed before it was named


@pytest.mark.slow
def test_a_resumed_run_keeps_the_best_it_had(best_runs):
    full, _, resumed, output = best_runs
    assert f"at step {STOP_AT}; best recon_nll" in output and f"at step {BEST}" in output, output[-3000:]
    assert _validations(resumed) == pytest.approx(_validations(full), rel=1e-5)
    # Forgetting the best would have made step 12, the resumed half's first validation, the new best.
    assert (resumed / "checkpoints" / BEST_FILE).read_text().strip() == "step_00000006"


@pytest.mark.slow
def test_init_from_a_run_that_kept_a_best_starts_from_it(best_runs, data_overrides, launch, tmp_path):
    from seq2vae.checkpoint.init_from import resolve_init_from

    full, _, _, _ = best_runs
    config = load_train_config(CONFIGS / "debug-zero2.yaml", [*data_overrides, f"model.init_from={full}"])
    source = resolve_init_from(config.model)
    assert (source.kind, source.path) == ("run", full / "checkpoints" / "step_00000006")
    output = _train(launch, data_overrides, tmp_path / "from-best", f"model.init_from={full}", "phases.0.steps=0",
                    "phases.1.steps=1", "checkpoint.keep_best=false")
    assert f"initial weights from model.init_from={full} (best checkpoint step_00000006)" in output, output[-3000:]
    # Without a best, the latest.
    (full / "checkpoints" / BEST_FILE).rename(full / "checkpoints" / "best.moved")
    try:
        assert resolve_init_from(config.model).description.endswith("(latest checkpoint step_00000012)")
    finally:
        (full / "checkpoints" / "best.moved").rename(full / "checkpoints" / BEST_FILE)


@pytest.mark.slow
def test_eval_and_export_take_the_latest_unless_asked_for_the_best(best_runs, shard_dir, launch):
    full, _, _, _ = best_runs
    output = full / "eval-best.json"
    done = launch.seq2vae("eval", "--model", str(full), "--checkpoint", "best", "--data", str(shard_dir), "--device", "cpu",
                          "--iw-samples", "2", "--max-sentences", "8", "--prior-samples", "0", "--interpolations", "0",
                          "--output", str(output))
    assert done.returncode == 0, launch.tail(done)
    assert json.loads(output.read_text())["model_kind"] == "run export step_00000006"
    from seq2vae.checkpoint.export import main as export_main

    assert export_main([str(full), "--checkpoint", "latest"]) == 0
    assert sorted(p.name for p in (full / "export").iterdir()) == ["step_00000006", "step_00000012"]
