"""The LM head as the checkpoint stores it (model/backbone.py): a Flan-T5-like untied head survives every
build path, plain transformers reads our exports with the same head, and contradictions are refused."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM

from seq2vae.model import Seq2SeqVAE, VAEConfig, build_vae
from seq2vae.model.backbone import CheckpointHeadError


def saved_head(directory):
    tensors = load_file(directory / "model.safetensors")
    return tensors["lm_head.weight"], tensors["shared.weight"]


def assert_untied_with(backbone, head):
    assert backbone.get_output_embeddings().weight is not backbone.get_input_embeddings().weight
    assert backbone.encoder.embed_tokens.weight is backbone.shared.weight  # the input ties stay
    torch.testing.assert_close(backbone.lm_head.weight, head, rtol=0, atol=0)


def test_flan_like_head_survives_build_save_and_plain_transformers(flan_like_dir, tmp_path):
    head, embedding = saved_head(flan_like_dir)
    assert not torch.equal(head, embedding)
    vae = build_vae(VAEConfig(backbone=str(flan_like_dir), latent_dim=8))
    assert_untied_with(vae.backbone, head)
    # The head is the decoder's (freeze: [decoder] freezes it), not the embedding group's.
    groups = vae.parameter_groups()
    assert any(p is vae.backbone.lm_head.weight for p in groups["decoder"])
    assert all(p is not vae.backbone.lm_head.weight for p in groups["embeddings"])

    vae.save_pretrained(tmp_path / "export")
    assert_untied_with(Seq2SeqVAE.from_pretrained(tmp_path / "export").backbone, head)
    plain = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "export" / "backbone")
    assert_untied_with(plain, head)


def test_architecture_only_builds_keep_the_head_untied(flan_like_dir):
    """from_config (export's and init_from's meta-device build) ties every T5 in transformers 5 unless told."""
    config = VAEConfig(backbone=str(flan_like_dir), latent_dim=8)
    with torch.device("meta"):
        meta = build_vae(config, pretrained_weights=False)
    assert meta.backbone.lm_head.weight is not meta.backbone.shared.weight
    random = build_vae(config, pretrained_weights=False)
    assert random.backbone.lm_head.weight is not random.backbone.shared.weight
    assert {n for n, _ in meta.named_parameters()} == {n for n, _ in random.named_parameters()}
    assert "backbone.lm_head.weight" in dict(random.named_parameters())


def test_tied_backbones_stay_tied(tiny_vae):
    backbone = tiny_vae.backbone
    assert backbone.get_output_embeddings().weight is backbone.get_input_embeddings().weight


def _copy_with(flan_like_dir, destination, head):
    shutil.copytree(flan_like_dir, destination)
    tensors = load_file(flan_like_dir / "model.safetensors")
    if head is None:
        del tensors["lm_head.weight"]
    else:
        tensors["lm_head.weight"] = head
    save_file(tensors, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


@pytest.mark.parametrize("damage", ["head removed", "head equals embedding"])
def test_untied_config_without_its_head_is_refused_naming_the_file(flan_like_dir, tmp_path, damage):
    _, embedding = saved_head(flan_like_dir)
    damaged = _copy_with(flan_like_dir, tmp_path / "damaged", None if damage == "head removed" else embedding.clone())
    with pytest.raises(CheckpointHeadError, match=str(damaged / "model.safetensors")):
        build_vae(VAEConfig(backbone=str(damaged), latent_dim=8))
    with pytest.raises(CheckpointHeadError, match="untied LM head"):
        build_vae(VAEConfig(backbone=str(damaged), latent_dim=8), pretrained_weights=False)


def test_tied_config_with_a_separate_head_is_refused(tiny_t5_dir, tmp_path):
    """The original T5 ties and rescales its output: a different head there is not what the config describes."""
    copy = tmp_path / "model"
    shutil.copytree(tiny_t5_dir, copy)
    tensors = load_file(copy / "backbone" / "model.safetensors")
    tensors["lm_head.weight"] = torch.randn_like(tensors["shared.weight"])
    save_file(tensors, copy / "backbone" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointHeadError, match="declares them tied"):
        Seq2SeqVAE.from_pretrained(copy)
