"""Model placement for `seq2vae eval`: the choice by the planner's inference-memory estimate, the same
choice in `seq2vae plan` and in eval for the same model and layout, sizing a saved model from its
configs, and a real 2-rank ZeRO-3 evaluation (torchrun, gloo) against the 1-rank replica evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from seq2vae.commands.plan import main as plan_main
from seq2vae.evaluation.placement import (
    PlacementError,
    auto_placement,
    choose_placement,
    saved_model_shape,
    stored_dtype,
)
from seq2vae.model import VAEConfig
from seq2vae.model.shape import model_shape
from seq2vae.plan.memory import InferenceBatch

GIB = 2**30
FLAN_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "flan-t5-xxl-zero3.yaml"
# 16 sentences x 4 samples of 64 tokens per decoder call: 1.0-1.3 GiB of activations for flan-t5-xxl.
SMALL_CALL = InferenceBatch(sequences=64, length=64)


@pytest.fixture(scope="module")
def flan_t5_xxl(backbone_dirs):
    """The planner's shape of an 11B flan-t5-xxl VAE (built on the meta device from its config)."""
    return model_shape(AutoConfig.from_pretrained(backbone_dirs["flan-t5-xxl"]), VAEConfig(backbone="x", latent_dim=32))


def test_replica_when_it_fits_else_zero3(flan_t5_xxl):
    # 20.5 GiB of bf16 weights + 1.3 GiB of activations fit the 70 GiB usable of an 80 GiB GPU.
    assert choose_placement(flan_t5_xxl, 2, SMALL_CALL, 80 * GIB, world_size=8) == "replica"
    # Not the 12.4 GiB usable of a 16 GiB GPU; 1/8 of the weights (2.6 GiB) + the gathered working set
    # (DeepSpeed's 1e9-parameter reuse distance + the largest module + the prefetch bucket, 2.2 GiB)
    # + activations do.
    assert choose_placement(flan_t5_xxl, 2, SMALL_CALL, 16 * GIB, world_size=8) == "zero3"
    # fp32 weights take twice as much, and still fit a replica on 80 GiB.
    assert choose_placement(flan_t5_xxl, 4, SMALL_CALL, 80 * GIB, world_size=8) == "replica"


def test_no_fit_names_the_ranks_needed_and_that_many_ranks_fit(flan_t5_xxl):
    # 41 GiB of fp32 weights on 2 x 16 GiB: 41/W + 4.4 GiB gathered + 1.0 GiB activations <= 12.4 GiB
    # from W = 6 on.
    with pytest.raises(PlacementError, match=r"do not fit 2 rank\(s\) with 12\.4 GiB usable.*run on at least 6 ranks"):
        choose_placement(flan_t5_xxl, 4, SMALL_CALL, 16 * GIB, world_size=2)
    assert choose_placement(flan_t5_xxl, 4, SMALL_CALL, 16 * GIB, world_size=6) == "zero3"
    with pytest.raises(PlacementError):
        choose_placement(flan_t5_xxl, 4, SMALL_CALL, 16 * GIB, world_size=5)
    # One rank cannot partition: the message still says how many would do.
    with pytest.raises(PlacementError, match=r"do not fit 1 rank\(s\).*run on at least 3 ranks"):
        choose_placement(flan_t5_xxl, 2, SMALL_CALL, 16 * GIB, world_size=1)


def test_activations_count_and_the_decoder_batch_that_fits_is_named(flan_t5_xxl):
    # 1024 sequences x 256 tokens: the [sequences, T, V] logits, their fp32 copy and log-softmax take
    # 80 GiB in bf16, more than any placement leaves on 8 x 80 GiB; more ranks do not shrink them.
    large = InferenceBatch(sequences=1024, length=256)
    with pytest.raises(PlacementError, match=r"--decoder-batch-size.* at most (\d+) sequences") as raised:
        choose_placement(flan_t5_xxl, 2, large, 80 * GIB, world_size=8)
    assert "run on at least" not in str(raised.value)
    most = int(re.search(r"at most (\d+) sequences", str(raised.value)).group(1))
    assert choose_placement(flan_t5_xxl, 2, InferenceBatch(most, 256), 80 * GIB, world_size=8) == "zero3"
    with pytest.raises(PlacementError):
        choose_placement(flan_t5_xxl, 2, InferenceBatch(most + 1, 256), 80 * GIB, world_size=8)


def _sizable_model_dir(directory: Path, vae_config: VAEConfig, backbone_dir: Path, dtype: torch.dtype) -> Path:
    """What eval sizes a saved model from, without 11B weights: vae_config.json as save_pretrained
    writes it, backbone/config.json, and one safetensors file whose header gives the stored dtype."""
    from safetensors.torch import save_file

    from seq2vae.model.vae import BACKBONE_SUBDIR, CONFIG_FILE, FORMAT_VERSION

    (directory / BACKBONE_SUBDIR).mkdir(parents=True)
    (directory / BACKBONE_SUBDIR / "config.json").write_text((backbone_dir / "config.json").read_text())
    save_file({"shared.weight": torch.zeros(1, dtype=dtype)}, directory / BACKBONE_SUBDIR / "model.safetensors")
    (directory / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, "vae": vae_config.to_dict()}))
    return directory


@pytest.mark.parametrize(
    "gpus, memory_gib, dtype, expected",
    [(8, 80, "bf16", "replica"), (8, 16, "bf16", "zero3"), (2, 16, "fp32", "run on at least 11 ranks")],
    ids=["8x80GiB-bf16", "8x16GiB-bf16", "2x16GiB-fp32"],
)
def test_plan_and_eval_choose_the_same_placement(gpus, memory_gib, dtype, expected, backbone_dirs, capsys, tmp_path):
    from seq2vae.train.config import load_train_config

    backbone = f"model.backbone={backbone_dirs['flan-t5-xxl']}"
    argv = ["--config", str(FLAN_CONFIG), backbone, "--nodes", "1", "--gpus-per-node", str(gpus),
            "--gpu-memory-gib", str(memory_gib), "--max-length", "16", "--json"]
    plan_main(argv)  # the training verdict (exit code) is not what this test is about
    evaluation = json.loads(capsys.readouterr().out)["evaluation"]
    # eval's defaults on GPUs: 16 sentences x 64 of the 500 samples per decoder call.
    assert (evaluation["sequences_per_decoder_call"], evaluation["length"]) == (1024, 16)
    batch = InferenceBatch(evaluation["sequences_per_decoder_call"], evaluation["length"])
    # The model that training config would export, as eval sees it: configs and a stored dtype.
    model = load_train_config(FLAN_CONFIG, [backbone]).model
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model_dir = _sizable_model_dir(tmp_path / "model", model, backbone_dirs["flan-t5-xxl"], torch_dtype)
    planned = evaluation[dtype]
    if expected in ("replica", "zero3"):
        assert planned["placement"] == expected and planned["problem"] is None
        assert auto_placement(model_dir, memory_gib * GIB, gpus, batch) == expected
        return
    assert planned["placement"] is None and expected in planned["problem"]
    with pytest.raises(PlacementError) as raised:
        auto_placement(model_dir, memory_gib * GIB, gpus, batch)
    assert str(raised.value) == planned["problem"]


def test_a_saved_model_is_sized_from_its_configs_as_the_planner_sizes_its_training_config(tiny_t5_dir):
    from seq2vae.model import Seq2SeqVAE

    vae = Seq2SeqVAE.from_pretrained(tiny_t5_dir)
    shape = saved_model_shape(tiny_t5_dir)
    assert shape == model_shape(vae.backbone.config, vae.config)
    assert shape.parameters == sum(parameter.numel() for parameter in vae.parameters())  # tied weights once
    assert stored_dtype(tiny_t5_dir) == torch.float32


@pytest.mark.slow
def test_two_rank_zero3_evaluation_equals_one_rank(tiny_t5_dir, eval_jsonl, eval_args, one_rank_json, launch, tmp_path):
    one = one_rank_json  # the replica result tests/evaluation/test_cli.py checks too
    two = tmp_path / "zero3.json"
    done = launch.run(
        ["-m", "seq2vae", "eval", "--model", str(tiny_t5_dir), "--data", str(eval_jsonl), *eval_args, "--placement", "zero3",
         "--output", str(two)]
    )
    assert done.returncode == 0, launch.tail(done)
    replica, zero3 = json.loads(one.read_text()), json.loads(two.read_text())
    assert (replica["placement"], zero3["placement"], zero3["world_size"]) == ("replica", "zero3", 2)
    # ZeRO-3 gathers the same fp32 weights and runs the same kernels on the same batches, so the only
    # possible difference is float summation order: 1e-5 relative is far below any metric's meaning.
    assert set(zero3["metrics"]) == set(replica["metrics"])
    for key, value in replica["metrics"].items():
        if isinstance(value, float):
            assert zero3["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert zero3["metrics"][key] == value, key
    for key in ("reconstruction", "prior_samples", "interpolations"):  # greedy decoding: identical text
        assert zero3[key] == replica[key], key
