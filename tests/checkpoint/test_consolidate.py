"""`consolidate` returns what DeepSpeed's zero_to_fp32 returns, bit for bit, on real 2-rank checkpoints (issue 10.4)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from seq2vae.checkpoint.consolidate import consolidate

LAYOUT_WORKER = Path(__file__).with_name("zero_layout_worker.py")
STAGES = ("zero1", "zero2", "zero3")

pytestmark = pytest.mark.slow  # the golden runs and a 2-rank DeepSpeed layout job


@pytest.fixture(scope="module")
def layout_checkpoints(launch, tmp_path_factory) -> Path:
    """OUT/zero{1,2,3}/step_1: frozen parameters, buffers, odd sizes, two param groups, a tied weight."""
    out = tmp_path_factory.mktemp("zero-layouts")
    done = launch.run([str(LAYOUT_WORKER), str(out)], timeout=180)
    assert done.returncode == 0, launch.tail(done)
    return out


def _deepspeed(checkpoint: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.parent), tag=checkpoint.name)


def _assert_identical(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)  # names, and their order
    for name, expected in theirs.items():
        value = ours[name]
        assert (value.dtype, value.shape) == (expected.dtype, expected.shape), name
        assert torch.equal(value, expected), name
    for alias in theirs:  # shared parameters stay one tensor
        sharing = [name for name in theirs if theirs[name] is theirs[alias]]
        assert all(ours[name] is ours[alias] for name in sharing), sharing


def _frozen_names(checkpoint: Path) -> list[str]:
    from seq2vae.checkpoint.safe_load import load_weights_only

    model_states = sorted(checkpoint.glob("*model_states.pt"))[0]
    return list(load_weights_only(model_states).get("frozen_param_shapes") or {})


@pytest.mark.parametrize("stage", STAGES)
def test_same_state_as_deepspeed_on_the_golden_runs(stage, golden_runs):
    checkpoints = sorted((golden_runs[stage] / "run" / "checkpoints").glob("step_*"))
    assert [c.name for c in checkpoints] == ["step_00000004", "step_00000020"]
    for checkpoint in checkpoints:
        _assert_identical(consolidate(checkpoint), _deepspeed(checkpoint))
    # Step 4 was written while phase 1 froze the decoder: ZeRO-2/3 list its parameters as frozen
    # (and in the optimizer's partitions too, whose fp32 copy is the value).
    frozen = _frozen_names(checkpoints[0])
    if stage == "zero1":
        assert frozen == []
    else:
        assert len(frozen) > 10 and all(name.startswith("backbone.decoder.") for name in frozen), frozen
    assert _frozen_names(checkpoints[1]) == []


@pytest.mark.parametrize("stage", STAGES)
def test_same_state_as_deepspeed_with_frozen_parameters_buffers_and_padding(stage, layout_checkpoints):
    checkpoint = layout_checkpoints / stage / "step_1"
    ours = consolidate(checkpoint)
    _assert_identical(ours, _deepspeed(checkpoint))
    assert ours["counts"].dtype == torch.int64 and "scratch" not in ours
    assert ours["head.weight"] is ours["embed.weight"]
    if stage != "zero1":  # ZeRO-1 checkpoints do not save parameters outside the optimizer
        assert _frozen_names(checkpoint) == ["frozen.weight", "frozen.bias"]
        assert ours["frozen.weight"].shape == (7, 13)


def test_floating_point_tensors_come_in_the_requested_dtype(golden_runs, layout_checkpoints):
    for checkpoint in (golden_runs["zero3"] / "run" / "checkpoints" / "step_00000004", layout_checkpoints / "zero2" / "step_1"):
        theirs = _deepspeed(checkpoint)
        ours = consolidate(checkpoint, torch.bfloat16)
        assert list(ours) == list(theirs)
        for name, expected in theirs.items():
            expected = expected.to(torch.bfloat16) if expected.is_floating_point() else expected
            assert ours[name].dtype == expected.dtype and torch.equal(ours[name], expected), name


def test_pages_read_are_given_back_and_only_those_of_checkpoint_files(golden_runs):
    from seq2vae.checkpoint.mapped_pages import MappedPages
    from seq2vae.checkpoint.safe_load import load_weights_only

    path = golden_runs["zero2"] / "run" / "checkpoints" / "step_00000020" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    pages = MappedPages()
    partition = load_weights_only(path)["optimizer_state_dict"]["single_partition_of_fp32_groups"][2]
    pages.track(path)
    before = partition.clone()
    pages.release(partition)
    assert pages.released_bytes >= partition.numel() * 4
    assert torch.equal(partition, before)  # read back from the file

    in_memory = before.clone()  # anonymous memory: releasing it would zero it, so it is left alone
    pages.released_bytes = 0
    pages.release(in_memory)
    assert pages.released_bytes == 0 and torch.equal(in_memory, before)


def test_missing_or_foreign_files_are_named(golden_runs, tmp_path):
    source = golden_runs["zero2"] / "run" / "checkpoints" / "step_00000020"
    checkpoint = shutil.copytree(source, tmp_path / "step")
    (checkpoint / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(ValueError, match="written by 2 ranks but holds 1"):
        consolidate(checkpoint)

    model_states = checkpoint / "mp_rank_00_model_states.pt"
    torch.save({"weights": torch.ones(3)}, model_states)
    with pytest.raises(ValueError, match=f"{model_states} is not a ZeRO model state file"):
        consolidate(checkpoint)

    with pytest.raises(FileNotFoundError, match=r"no \*_model_states.pt files"):
        consolidate(tmp_path)
