"""`consolidate` returns what DeepSpeed's zero_to_fp32 returns, bit for bit, on real 2-rank checkpoints (issue 10.4), and
the fp32 masters / module state of the two layouts zero_to_fp32 cannot read (BF16_Optimizer, no ZeRO)."""

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


def test_bf16_optimizer_checkpoints_give_the_fp32_masters(layout_checkpoints, tmp_path):
    """DeepSpeed's BF16_Optimizer (stage 1, bf16, fp32 accumulation) writes no `zero_stage`: zero_to_fp32
    refuses it; the reference is the live engine's fp32 masters, gathered after the step."""
    checkpoint = layout_checkpoints / "zero1-bf16" / "step_1"
    reference = torch.load(checkpoint.parent / "reference.pt", weights_only=True)
    ours = consolidate(checkpoint)
    assert list(ours) == ["scale", "counts", "embed.weight", "hidden.weight", "hidden.bias", "head.weight"]
    for name, master in reference.items():
        assert ours[name].dtype == torch.float32 and torch.equal(ours[name], master), name
    assert ours["head.weight"] is ours["embed.weight"]
    # The bf16 weights DeepSpeed saved are the masters rounded; the masters carry more than that.
    module = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert all(torch.equal(ours[name].to(torch.bfloat16), module[name]) for name in reference)
    assert any(not torch.equal(ours[name], module[name].float()) for name in reference)
    halved = consolidate(checkpoint, torch.bfloat16)
    assert all(torch.equal(halved[name], module[name]) for name in reference) and halved["counts"].dtype == torch.int64

    broken = shutil.copytree(checkpoint, tmp_path / "step_1")
    path = broken / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    state = torch.load(path, weights_only=False)
    state["optimizer_state_dict"]["single_partition_of_fp32_groups"][0] = state["optimizer_state_dict"][
        "single_partition_of_fp32_groups"][0][:-2]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"mp_rank_00_model_states.pt: param group 0 lays out \d+ elements"):
        consolidate(broken)


def test_stage_0_checkpoints_give_the_module_state(layout_checkpoints, tmp_path):
    checkpoint = layout_checkpoints / "stage0" / "step_1"
    assert not list(checkpoint.glob("*_optim_states.pt"))  # the optimizer state is inside the model states
    reference = torch.load(checkpoint.parent / "reference.pt", weights_only=True)
    ours = consolidate(checkpoint)
    assert list(ours) == list(reference)  # frozen parameters and persistent buffers included
    assert all(torch.equal(ours[name], value) and ours[name].dtype == value.dtype for name, value in reference.items())
    assert ours["head.weight"] is ours["embed.weight"]
    halved = consolidate(checkpoint, torch.bfloat16)
    assert halved["hidden.weight"].dtype == torch.bfloat16 and halved["counts"].dtype == torch.int64

    # Without its optimizer state it is no checkpoint of ours: the ZeRO reading names what is missing.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    state = torch.load(checkpoint / "mp_rank_00_model_states.pt", weights_only=False)
    torch.save({**state, "optimizer": None}, foreign / "mp_rank_00_model_states.pt")
    with pytest.raises(ValueError, match="is not a ZeRO model state file"):
        consolidate(foreign)
