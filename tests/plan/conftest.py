"""Backbone config directories (config.json only, no weights) for planner tests, written locally."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import T5Config

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


def _write(directory: Path, settings: dict) -> Path:
    T5Config(**settings).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def backbone_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {
        "tiny-t5": _write(root / "tiny-t5", TINY_T5),
        "t5-base": _write(root / "t5-base", T5_BASE),
        "flan-t5-xxl": _write(root / "flan-t5-xxl", FLAN_T5_XXL),
    }
