"""`Seq2SeqVAE.from_pretrained` never unpickles: pickle-format weights in a model directory are refused."""

from __future__ import annotations

import shutil

import pytest
import torch


@pytest.mark.parametrize("beside_safetensors", [True, False])
def test_pytorch_model_bin_is_refused(beside_safetensors, tiny_t5_dir, tmp_path):
    from seq2vae.model import Seq2SeqVAE

    directory = shutil.copytree(tiny_t5_dir, tmp_path / "model")
    backbone = directory / "backbone"
    state = {name: tensor.clone() for name, tensor in Seq2SeqVAE.from_pretrained(tiny_t5_dir).backbone.state_dict().items()}
    torch.save(state, backbone / "pytorch_model.bin")
    if not beside_safetensors:
        for path in backbone.glob("*.safetensors"):
            path.unlink()
    with pytest.raises(ValueError, match="pytorch_model.bin.*pickle-format weights are refused"):
        Seq2SeqVAE.from_pretrained(directory)


def test_a_clean_directory_still_loads(tiny_t5_dir):
    from seq2vae.model import Seq2SeqVAE

    assert Seq2SeqVAE.from_pretrained(tiny_t5_dir).config.latent_dim == 16
