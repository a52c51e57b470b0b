"""Fixtures for the data tests: a small synthetic corpus and shards written from it with uneven shards."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS_SIZE = 1200
# 1200 samples at valid fraction 0.1 -> ~1080 train samples in shards of 100: the last shard is partial,
# so ranks get unequal shard sizes and the loader must still balance them.
SHARD_SIZE = 100


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory) -> Path:
    from seq2vae.data.synthetic import write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", CORPUS_SIZE, seed=7)


@pytest.fixture(scope="session")
def shard_dir(corpus_jsonl, tokenizer_dir, tmp_path_factory) -> Path:
    """Train/valid shards of the synthetic corpus (metadata = its factors)."""
    from seq2vae.data.shards import write_shards

    directory = tmp_path_factory.mktemp("shards")
    write_shards(
        [str(corpus_jsonl)], directory, str(tokenizer_dir), valid_fraction=0.1, seed=1, max_length=64,
        shard_size=SHARD_SIZE, progress=False,
    )
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)
