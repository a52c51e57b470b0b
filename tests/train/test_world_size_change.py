"""Resuming a run on a different number of ranks: real torchrun ZeRO-2 and ZeRO-3 runs on CPU (gloo).

2 -> 1: a 2-rank run stops at step 6; the run continues on 1 rank (a universal checkpoint is converted
on the fly) and completes. 1 -> 2 the other way. Both keep the global batch (16 = 8 x accumulation x
ranks), so the schedule and the data position mean the same on either side. Checked: steps continue
from the checkpoint, beta follows the schedule, the loss continues smoothly, the optimizer state
carried over (each param group keeps its name and its own Adam step count), and the samples the
resumed run consumed (replayed from its final loader state) never repeat those of the first part.
The sample accounting over whole epochs is tests/data/test_reshard.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TOTAL_STEPS, STOP_AT, GLOBAL_BATCH, MICRO = 12, 6, 16, 8

pytestmark = pytest.mark.slow  # 2-rank torchrun runs resumed on another world size


def _client_state(checkpoint: Path) -> dict:
    # ZeRO-2: mp_rank_00_model_states.pt; ZeRO-3: one zero_pp_rank_R_mp_rank_00_model_states.pt per rank.
    path = sorted(checkpoint.glob("*mp_rank_00_model_states.pt"))[0]
    return torch.load(path, map_location="cpu", weights_only=False)


def _adam_steps(checkpoint: Path) -> dict[str, float]:
    """Adam's step count per param group name, from rank 0's optimizer file of a ZeRO-2 or ZeRO-3 checkpoint."""
    path = sorted(checkpoint.glob("*zero_pp_rank_0_mp_rank_00_optim_states.pt"))[0]
    saved = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    optimizer = saved.get("base_optimizer_state") or saved["optimizer_state_dict"]  # ZeRO-2 / ZeRO-3 layout
    return {
        group["name"]: float(optimizer["state"][index]["step"])
        for group in optimizer["param_groups"]
        for index in group["params"]
    }


def _keys_consumed(shard_dir, worlds: tuple[int, int], seed: int) -> tuple[list[str], dict]:
    """Replays the two parts' loaders: (keys consumed in order, the loader state at the end)."""
    from seq2vae.data.stream import build_loader

    keys, state = [], None
    for world_size in worlds:
        accumulation = GLOBAL_BATCH // (MICRO * world_size)
        states = []
        for rank in range(world_size):
            data = build_loader(
                shard_dir, "train", rank=rank, world_size=world_size, batch_size=MICRO, seed=seed, pad_token_id=0,
                num_workers=0, shuffle_buffer=100, state=state, with_keys=True,
            )
            for _ in range(STOP_AT * accumulation):
                keys.extend(next(data)["keys"])
            states.append(data.state_dict())
        state = states[0]
    return keys, state


@pytest.mark.parametrize(
    "stage, worlds",
    [("zero2", (2, 1)), ("zero2", (1, 2)), ("zero3", (2, 1)), ("zero3", (1, 2))],
    ids=["zero2-2to1", "zero2-1to2", "zero3-2to1", "zero3-1to2"],
)
def test_resume_on_another_world_size(stage, worlds, shard_dir, data_overrides, launch, tmp_path):
    from seq2vae.train.config import load_train_config
    from seq2vae.train.schedules import beta_at

    config = CONFIGS / f"debug-{stage}.yaml"
    run_dir = tmp_path / "run"
    common = [*data_overrides, f"run_dir={run_dir}", f"data.global_batch_size={GLOBAL_BATCH}"]
    first = launch.run(launch.train_args(config, *common, f"stop_at_step={STOP_AT}"), nproc=worlds[0])
    assert first.returncode == 0, launch.tail(first)
    before = launch.metrics(run_dir)
    second = launch.run(launch.train_args(config, *common, "--resume", "auto"), nproc=worlds[1])
    output = second.stdout + second.stderr
    assert second.returncode == 0, launch.tail(second)
    checkpoint = run_dir / "checkpoints" / f"step_{STOP_AT:08d}"
    assert f"resharded checkpoint {checkpoint} from {worlds[0]} to {worlds[1]} ranks" in output, launch.tail(second)
    assert f"converting {checkpoint} to a universal checkpoint for {worlds[1]} ranks" in output  # (pruned since)

    metrics = launch.metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, TOTAL_STEPS + 1))
    saved = load_train_config(run_dir / "config.yaml")
    vae_phase = saved.phases[1]
    for m in metrics[STOP_AT:]:  # the schedule position was kept: beta of phase 2 at its own step
        assert m["train/beta"] == pytest.approx(beta_at(vae_phase.beta, m["step"] - 1 - saved.phases[0].steps, vae_phase.steps))
    last_saved = sum(m["train/recon"] for m in before[-3:]) / 3
    first_resumed = sum(m["train/recon"] for m in metrics[STOP_AT : STOP_AT + 3]) / 3
    # Continues where it stopped: a fresh model would start near ln(vocab) per token, far above.
    assert 0.7 * last_saved < first_resumed < 1.15 * last_saved, (last_saved, first_resumed)

    # The optimizer state carried over: every group stepped once per step of a phase that trained it
    # (a count restarted at the resume, or advanced by another group's steps, would differ).
    adam_steps = _adam_steps(run_dir / "checkpoints" / f"step_{TOTAL_STEPS:08d}")
    trained_steps = {name: sum(phase.steps for phase in saved.phases if name not in phase.freeze) for name in adam_steps}
    assert adam_steps == trained_steps
    assert len(set(trained_steps.values())) > 1  # several groups kept their names, the decoder's count is its own

    # Sample accounting: the resumed ranks read the epoch's unread samples, none of the first part's.
    keys, replayed_state = _keys_consumed(shard_dir, worlds, saved.seed)
    assert len(keys) == len(set(keys)) == 2 * STOP_AT * GLOBAL_BATCH
    final = _client_state(run_dir / "checkpoints" / f"step_{TOTAL_STEPS:08d}")
    assert final["world_size"] == worlds[1]
    assert final["ranks"][0]["data"] == replayed_state  # the trainer consumed exactly the replayed samples
