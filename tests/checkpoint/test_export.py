"""`seq2vae export` options (issue 10.4): the written dtype and sharded safetensors, from real checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

SENTENCES = ["the quick brown fox jumps over the lazy dog", "a small cat sat on the warm mat"]

pytestmark = pytest.mark.slow  # exports of the golden runs' checkpoints


def _outputs(directory):
    from seq2vae.model import Seq2SeqVAE

    vae = Seq2SeqVAE.from_pretrained(directory).eval()
    batch = vae.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        output = vae(batch["input_ids"], batch["attention_mask"], labels, sample=False)
    return vae, output


def _stored_dtypes(directory) -> set[torch.dtype]:
    dtypes = set()
    for path in [*(directory / "backbone").glob("*.safetensors"), directory / "vae_heads.safetensors"]:
        with safe_open(str(path), framework="pt") as handle:
            dtypes |= {handle.get_tensor(key).dtype for key in handle.keys()}
    return dtypes


@pytest.fixture(scope="module")
def fp32_export(golden_runs, tmp_path_factory):
    from seq2vae.checkpoint.export import main

    output = tmp_path_factory.mktemp("export") / "fp32"
    assert main([str(golden_runs["zero3"] / "run"), "--output", str(output)]) == 0
    return output


def test_fp16_export_of_a_t5_is_refused_before_anything_is_written(golden_runs, tmp_path):
    from seq2vae.checkpoint.export import main
    from seq2vae.model.invariants import ModelInvariantError

    with pytest.raises(ModelInvariantError, match="fp16 is refused for t5 models: T5-family activations overflow"):
        main([str(golden_runs["zero3"] / "run"), "--output", str(tmp_path / "fp16"), "--dtype", "fp16"])
    assert not (tmp_path / "fp16").exists()


@pytest.mark.parametrize("dtype, torch_dtype, tolerance", [("bf16", torch.bfloat16, 3e-2)])
def test_export_dtype(dtype, torch_dtype, tolerance, fp32_export, golden_runs, tmp_path):
    from seq2vae.checkpoint.export import main

    output = tmp_path / dtype
    assert main([str(golden_runs["zero3"] / "run"), "--output", str(output), "--dtype", dtype]) == 0
    assert _stored_dtypes(fp32_export) == {torch.float32}
    assert _stored_dtypes(output) == {torch_dtype}
    vae, low = _outputs(output)
    assert {p.dtype for p in vae.parameters()} == {torch_dtype}
    _, reference = _outputs(fp32_export)
    torch.testing.assert_close(low.mu.float(), reference.mu, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(low.recon_nll.float(), reference.recon_nll, rtol=tolerance, atol=tolerance * 10)


def test_small_max_shard_size_writes_shards_and_an_index_that_load_back(fp32_export, golden_runs, tmp_path):
    from seq2vae.checkpoint.export import main

    output = tmp_path / "sharded"
    assert main([str(golden_runs["zero3"] / "run"), "--output", str(output), "--max-shard-size", "100KB"]) == 0
    shards = sorted((output / "backbone").glob("model-*.safetensors"))
    assert len(shards) > 2, shards
    index = json.loads((output / "backbone" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {path.name for path in shards}
    tensors_per_shard = {path.name: list(index["weight_map"].values()).count(path.name) for path in shards}
    # A shard holding several tensors stays under the limit (plus its header); one large tensor may exceed it.
    assert all(path.stat().st_size <= 110_000 or tensors_per_shard[path.name] == 1 for path in shards)
    sharded, sharded_output = _outputs(output)
    whole, whole_output = _outputs(fp32_export)
    assert len(list((fp32_export / "backbone").glob("*.safetensors"))) == 1
    for (name, parameter), (_, expected) in zip(sharded.named_parameters(), whole.named_parameters(), strict=True):
        assert torch.equal(parameter, expected), name
    assert torch.equal(sharded_output.recon_nll, whole_output.recon_nll)
    assert sharded.backbone.shared.weight is sharded.backbone.encoder.embed_tokens.weight  # still tied


def test_bad_dtype_is_refused(golden_runs, capsys):
    from seq2vae.checkpoint.export import export_run

    with pytest.raises(ValueError, match="--dtype 'int8'"):
        export_run(golden_runs["zero3"] / "run", "/nonexistent/never-written", dtype="int8")
