"""Session fixtures shared by every test package: an offline tokenizer and tiny saved models.

Everything is built here, from the synthetic corpus, because the tests run without hub access.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# DeepSpeed (imported by train/ tests and subprocesses) must pick its CPU accelerator here.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOKENIZER_CORPUS_SIZE = 3000


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A Unigram tokenizer (pad 0, eos 1, unk 2, mask 3) trained on the synthetic corpus."""
    from seq2vae.data.synthetic import generate_corpus
    from seq2vae.data.tokenizer import train_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    texts = (row["text"] for row in generate_corpus(TOKENIZER_CORPUS_SIZE, seed=0))
    train_tokenizer(texts, directory, vocab_size=1000)
    return directory


def save_tiny_vae(kind: str, tokenizer_dir: Path, directory: Path, **settings) -> Path:
    from seq2vae.model import VAEConfig, build_vae

    torch.manual_seed(0)
    config = VAEConfig(backbone=f"debug-{kind}", tokenizer=str(tokenizer_dir), latent_dim=16, **settings)
    return build_vae(config).save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_t5_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A saved tiny random T5 VAE (2+2 layers, d_model 64, latent 16)."""
    return save_tiny_vae("t5", tokenizer_dir, tmp_path_factory.mktemp("models") / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_bart_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A saved tiny random BART VAE (2+2 layers, d_model 64, latent 16)."""
    return save_tiny_vae("bart", tokenizer_dir, tmp_path_factory.mktemp("models") / "tiny-bart")


# Hand-countable T5 (see test_model_shape.py): vocabulary 100, D 8, 2 heads x 4, FFN 16 (ReLU, two
# matrices), one encoder and one decoder layer, LM head tied to the embedding.
TINY_T5 = dict(
    vocab_size=100, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1, num_heads=2,
    relative_attention_num_buckets=32, feed_forward_proj="relu", tie_word_embeddings=True,
)
# The published configs of t5-base and google/flan-t5-xxl (their hub config.json files).
T5_BASE = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
    feed_forward_proj="relu", tie_word_embeddings=True,
)
FLAN_T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False, dtype="float32",
)


def _write_backbone_config(directory: Path, settings: dict) -> Path:
    from transformers import T5Config

    T5Config(**settings).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def backbone_dirs(tmp_path_factory) -> dict[str, Path]:
    """Backbone config directories (config.json only, no weights) for the planner and for sizing."""
    root = tmp_path_factory.mktemp("backbones")
    return {
        "tiny-t5": _write_backbone_config(root / "tiny-t5", TINY_T5),
        "t5-base": _write_backbone_config(root / "t5-base", T5_BASE),
        "flan-t5-xxl": _write_backbone_config(root / "flan-t5-xxl", FLAN_T5_XXL),
    }


@pytest.fixture
def free_port() -> int:
    """A TCP port on loopback that is free right now (for torchrun rendezvous)."""
    from seq2vae.train.distributed import free_port as pick_free_port

    return pick_free_port()


def _copy_with_out_of_range_id(
    shard_dir: Path, destination: Path, shard_name: str | list[str], sample_index: int, token_id: int
) -> str:
    """Copies a shard directory, then rewrites sample `sample_index` of `shard_name` (or of each shard in
    a list) so one of its ids is `token_id` (a well-formed int32 .npy: only the vocabulary check can
    catch it). Returns the (first) rewritten sample's key."""
    import shutil

    shutil.copytree(shard_dir, destination)
    names = [shard_name] if isinstance(shard_name, str) else shard_name
    return [_rewrite_ids(destination / name, sample_index, token_id) for name in names][0]


def _rewrite_ids(path: Path, sample_index: int, token_id: int) -> str:
    import io
    import tarfile

    import numpy as np

    from seq2vae.data.shards import encode_ids

    members = []
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            members.append((member, archive.extractfile(member).read()))
    keys = sorted({member.name.split(".", 1)[0] for member, _ in members})
    bad_key = keys[sample_index]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for member, data in members:
            if member.name == f"{bad_key}.input_ids.npy":
                ids = np.load(io.BytesIO(data))
                ids[0] = token_id
                data = encode_ids(ids)
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return bad_key


@pytest.fixture(scope="session")
def out_of_range_copy():
    """`copy(shard_dir, destination, shard_name, sample_index, token_id) -> key`: a shard directory copy
    with one token id outside the tokenizer's vocabulary."""
    return _copy_with_out_of_range_id
