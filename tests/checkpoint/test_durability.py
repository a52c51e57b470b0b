"""Checkpoint manifests, verification and auto's fallback, on real files in one process (no DeepSpeed).

The 2-rank torchrun version (a damaged DeepSpeed checkpoint, resume auto and an explicit path) is in
test_damaged_checkpoints.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seq2vae.checkpoint.durability import (
    MANIFEST_FILE,
    DamagedCheckpointError,
    atomic_write_text,
    checkpoint_problems,
    file_owner,
    seal_checkpoint,
)
from seq2vae.checkpoint.saving import LATEST_FILE, checkpoint_tag, resolve_resume

RANK_FILES = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
              "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def _write_checkpoint(checkpoints_dir: Path, step: int, seal: bool = True) -> Path:
    """A checkpoint laid out like DeepSpeed's 2-rank ZeRO-2 one (distinct contents per file and step)."""
    path = checkpoints_dir / checkpoint_tag(step)
    path.mkdir(parents=True)
    for index, name in enumerate(RANK_FILES):
        (path / name).write_bytes(bytes([step, index]) * 5000)
    if seal:
        seal_checkpoint(path, rank=0, world_size=1)
        atomic_write_text(checkpoints_dir / LATEST_FILE, path.name + "\n")
    return path


def test_manifest_lists_every_file_with_size_and_checksum(tmp_path):
    path = _write_checkpoint(tmp_path, 5)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert sorted(manifest["files"]) == sorted(RANK_FILES)
    assert all(entry["size"] == 10000 and len(entry["crc32"]) == 8 for entry in manifest["files"].values())
    assert checkpoint_problems(path) == []
    assert not list(tmp_path.rglob(".*.tmp"))  # the atomic writes left no staging files


def test_rank_files_belong_to_their_writer_modulo_the_world():
    assert file_owner("zero_pp_rank_1_mp_rank_00_optim_states.pt", 2) == 1
    assert file_owner("zero_pp_rank_3_mp_rank_00_optim_states.pt", 2) == 1
    assert file_owner("mp_rank_00_model_states.pt", 2) == 0


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "100 bytes, the manifest says 10000"),
        (lambda p: p.write_bytes(b"\xff" + p.read_bytes()[1:]), "checksum mismatch"),
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["truncated", "corrupted", "missing"],
)
def test_damage_is_reported_by_file_name(tmp_path, damage, expected):
    path = _write_checkpoint(tmp_path, 5)
    damage(path / RANK_FILES[2])
    problems = checkpoint_problems(path)
    assert len(problems) == 1 and problems[0].startswith(str(path / RANK_FILES[2])) and expected in problems[0], problems


def test_a_checkpoint_without_manifest_is_incomplete(tmp_path):
    path = _write_checkpoint(tmp_path, 5, seal=False)
    assert "incomplete: it has no manifest.json" in checkpoint_problems(path)[0]


def test_auto_falls_back_to_the_previous_intact_checkpoint_and_warns(tmp_path, capsys):
    older = _write_checkpoint(tmp_path, 5)
    newest = _write_checkpoint(tmp_path, 10)
    (newest / RANK_FILES[1]).write_bytes(b"")
    assert resolve_resume("auto", tmp_path) == older
    warning = capsys.readouterr().out
    assert f"skipping damaged checkpoint {newest}" in warning and RANK_FILES[1] in warning
    assert not newest.exists() and (tmp_path / f"damaged-{newest.name}" / RANK_FILES[1]).is_file()


def test_the_preflight_look_moves_nothing_and_reads_no_file(tmp_path, capsys):
    # Each rank runs the preflight alone: one rank moving the damaged checkpoint aside made another,
    # still reading its manifest, fail with FileNotFoundError.
    older = _write_checkpoint(tmp_path, 5)
    newest = _write_checkpoint(tmp_path, 10)
    (newest / RANK_FILES[1]).write_bytes(b"")
    assert resolve_resume("auto", tmp_path, look_only=True) == older
    assert newest.is_dir() and capsys.readouterr().out == ""
    # It reads no file: a corruption that keeps the size is left to the ranks' checksums.
    (newest / RANK_FILES[1]).write_bytes(bytes([99, 1]) * 5000)
    assert resolve_resume("auto", tmp_path, look_only=True) == newest
    assert resolve_resume("auto", tmp_path) == older


def test_auto_skips_a_newer_incomplete_save_and_a_missing_latest_target(tmp_path, capsys):
    intact = _write_checkpoint(tmp_path, 5)
    _write_checkpoint(tmp_path, 10, seal=False)  # a save that died before its manifest
    atomic_write_text(tmp_path / LATEST_FILE, checkpoint_tag(15) + "\n")  # names a deleted directory
    assert resolve_resume("auto", tmp_path) == intact
    out = capsys.readouterr().out
    assert "does not exist" in out and "no manifest.json" in out


def test_auto_fails_when_nothing_is_intact_and_starts_fresh_without_latest(tmp_path):
    assert resolve_resume("auto", tmp_path) is None
    newest = _write_checkpoint(tmp_path, 5)
    (newest / RANK_FILES[0]).unlink()
    with pytest.raises(DamagedCheckpointError, match="which is damaged, and no older checkpoint"):
        resolve_resume("auto", tmp_path)


def test_an_explicit_damaged_checkpoint_fails_naming_the_file(tmp_path):
    _write_checkpoint(tmp_path, 5)
    newest = _write_checkpoint(tmp_path, 10)
    (newest / RANK_FILES[2]).write_bytes(b"x" * 10000)
    with pytest.raises(DamagedCheckpointError, match=f"{RANK_FILES[2]}: checksum mismatch"):
        resolve_resume(str(newest), tmp_path)
    assert resolve_resume(str(tmp_path / checkpoint_tag(5)), tmp_path) == tmp_path / checkpoint_tag(5)


def test_a_world_size_change_that_is_not_supported_says_what_to_run(tmp_path):
    import torch

    from seq2vae.checkpoint.reshard import ReshardError, check_reshardable
    from seq2vae.distributed import World

    checkpoint = tmp_path / "run" / "checkpoints" / checkpoint_tag(5)
    checkpoint.mkdir(parents=True)
    (checkpoint / RANK_FILES[0]).write_bytes(b"weights")
    seal_checkpoint(checkpoint, rank=0, world_size=1)
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    (checkpoint / MANIFEST_FILE).write_text(json.dumps({**manifest, "world_size": 2}))  # as if written by 2 ranks
    one_rank = World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    check_reshardable(checkpoint, one_rank, zero_stage=3, offload=False)  # supported: no error
    with pytest.raises(
        ReshardError, match=r"written by 2 ranks and this job has 1.*with ZeRO offload.*Resume on 2 ranks.*zero_to_fp32\.py"
    ):
        check_reshardable(checkpoint, one_rank, zero_stage=3, offload=True)
    # Stage 0 writes no ZeRO partitions for zero_to_fp32: the way on is init_from (it reads stage 0).
    with pytest.raises(ReshardError, match=r"not at ZeRO stage 0.*Resume on 2 ranks, or start a new run from its weights "
                                           rf"with model\.init_from={tmp_path / 'run'}"):
        check_reshardable(checkpoint, one_rank, zero_stage=0, offload=False)
