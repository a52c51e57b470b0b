"""A Flan-T5-like backbone (untied LM head, saved different from its embedding) trained for real on ZeRO-2
and ZeRO-3 (2 ranks each, `model.dropout=0.2`), one run per stage reused for every assertion:

- dropout: every backbone dropout module runs in training mode with p = 0.2 on training steps and in
  eval mode in validation (transformers' `from_pretrained` returns eval mode);
- the LM head stays its own tensor, trains, differs from the embedding, and is exactly what training
  produced in the checkpoint, through `seq2vae export`, `seq2vae eval --model RUN_DIR`, `model.init_from`,
  our `from_pretrained` and plain `AutoModelForSeq2SeqLM`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

DROPOUT = 0.2


@pytest.fixture(scope="module", params=["zero2", "zero3"])
def flan_run(request, flan_like_dir, data_overrides, launch, tmp_path_factory):
    from seq2vae.config import save_config
    from seq2vae.train.config import load_train_config

    stage = request.param
    root = tmp_path_factory.mktemp(f"flan-{stage}")
    config = load_train_config(
        launch.configs / f"debug-{stage}.yaml",
        [*data_overrides, f"model.backbone={flan_like_dir}", f"model.dropout={DROPOUT}", f"run_dir={root / 'run'}"],
    )
    save_config(config, root / "config.yaml")
    done = launch.run([str(Path(__file__).with_name("flan_head_probe.py")), str(root / "config.yaml"), str(root)])
    assert done.returncode == 0, launch.tail(done)
    (root / "output.txt").write_text(done.stdout + done.stderr)
    return stage, root, json.loads((root / "probe.json").read_text()), torch.load(root / "head.pt")


def test_the_first_step_of_each_phase_checks_which_groups_got_gradients(flan_run):
    _, root, _, _ = flan_run
    output = (root / "output.txt").read_text()
    # Phase 1 freezes the decoder (LM head included), phase 2 trains everything.
    assert ("gradient check after the first step: trainable embeddings, encoder, latent, posterior received "
            "gradients; frozen decoder received none") in output
    assert ("gradient check after the first step: trainable decoder, embeddings, encoder, latent, posterior received "
            "gradients; nothing frozen") in output


def test_dropout_is_active_in_training_and_off_in_validation(flan_run):
    _, _, probe, _ = flan_run
    assert probe["dropout_modules"] >= 10
    assert probe["train"] == [[True, DROPOUT]], probe["train"]
    assert probe["validation"] == [[False, DROPOUT]], probe["validation"]


def test_the_head_trains_as_its_own_tensor_and_checkpoints_as_trained(flan_run, flan_like_dir):
    from seq2vae.checkpoint.consolidate import consolidate
    from seq2vae.checkpoint.saving import latest_checkpoint

    _, root, probe, final = flan_run
    assert probe["untied_at_start"] and probe["untied_at_end"] and probe["status"] == "completed"
    pretrained = load_file(flan_like_dir / "model.safetensors")["lm_head.weight"]
    assert not torch.equal(final["lm_head"], pretrained)  # phase 2 trains the decoder, head included
    assert not torch.equal(final["lm_head"], final["shared"])
    state = consolidate(latest_checkpoint(root / "run" / "checkpoints"))
    assert torch.equal(state["backbone.lm_head.weight"], final["lm_head"])


def _assert_head(model_dir: Path, final: dict) -> None:
    from seq2vae.model import Seq2SeqVAE

    stored = load_file(model_dir / "backbone" / "model.safetensors")
    assert torch.equal(stored["lm_head.weight"], final["lm_head"])
    for backbone in (Seq2SeqVAE.from_pretrained(model_dir).backbone,
                     AutoModelForSeq2SeqLM.from_pretrained(model_dir / "backbone")):
        assert backbone.lm_head.weight is not backbone.shared.weight
        assert torch.equal(backbone.lm_head.weight, final["lm_head"])
        assert torch.equal(backbone.shared.weight, final["shared"])


def test_export_and_eval_of_the_run_directory_keep_the_trained_head(flan_run, shard_dir, tmp_path):
    from seq2vae.checkpoint.export import main as export_main
    from seq2vae.cli import main as cli_main
    from seq2vae.evaluation.cli import main as eval_main

    _, root, _, final = flan_run
    exported = tmp_path / "exported"
    assert export_main([str(root / "run"), "--output", str(exported)]) == 0
    _assert_head(exported, final)
    # fp16 T5 is refused before anything is consolidated or written.
    assert cli_main(["export", str(root / "run"), "--dtype", "fp16", "--output", str(tmp_path / "fp16")]) == 2
    assert not (tmp_path / "fp16").exists()
    output = tmp_path / "eval.json"
    assert eval_main([
        "--model", str(root / "run"), "--data", str(shard_dir), "--iw-samples", "1", "--batch-size", "8",
        "--device", "cpu", "--max-sentences", "8", "--max-reconstructions", "0", "--output", str(output),
    ]) == 0
    (eval_export,) = (root / "run" / "export").iterdir()  # where eval exported the latest checkpoint
    _assert_head(eval_export, final)


def test_init_from_the_run_directory_starts_from_the_trained_head(flan_run):
    import dataclasses

    from seq2vae.checkpoint.init_from import load_init_weights, resolve_init_from
    from seq2vae.model import build_vae
    from seq2vae.train.config import load_train_config

    _, root, _, final = flan_run
    model = dataclasses.replace(load_train_config(root / "config.yaml").model, init_from=str(root / "run"))
    vae = build_vae(model, pretrained_weights=False)
    load_init_weights(vae, resolve_init_from(model), zero3=False)
    assert vae.backbone.lm_head.weight is not vae.backbone.shared.weight
    assert torch.equal(vae.backbone.lm_head.weight, final["lm_head"])
    assert torch.equal(vae.backbone.shared.weight, final["shared"])
