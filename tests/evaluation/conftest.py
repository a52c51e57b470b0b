"""Fixtures for the evaluation tests: a small JSONL corpus with factors, and a collapsed model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

EVAL_SENTENCES = 20  # with batch size 8: 3 batches, so 2 ranks run a dummy round
# `seq2vae eval` settings of the 1-rank, 2-rank and ZeRO-3 runs that must agree: every metric computed, quickly.
EVAL_ARGS = ["--iw-samples", "6", "--batch-size", "8", "--seed", "3", "--device", "cpu", "--max-reconstructions", "8"]


@pytest.fixture(scope="session")
def eval_jsonl(tmp_path_factory) -> Path:
    """20 synthetic sentences with topic / sentiment / tense / length metadata (JSONL)."""
    from seq2vae.data.synthetic import write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("eval-data") / "valid.jsonl", EVAL_SENTENCES, seed=1)


@pytest.fixture(scope="session")
def collapsed_t5_dir(tiny_t5_dir, tmp_path_factory) -> Path:
    """The tiny T5 VAE with its posterior head zeroed: mu = 0, logvar = 0 for every input."""
    from seq2vae.model import Seq2SeqVAE

    vae = Seq2SeqVAE.from_pretrained(tiny_t5_dir)
    with torch.no_grad():
        vae.posterior.weight.zero_()
        vae.posterior.bias.zero_()
    return vae.save_pretrained(tmp_path_factory.mktemp("models") / "collapsed-t5")


@pytest.fixture(scope="session")
def eval_shard_dir(eval_jsonl, tokenizer_dir, tmp_path_factory) -> Path:
    """Real webdataset shards whose valid split is the 20 JSONL sentences, in 2 shards (metadata = factors)."""
    from seq2vae.data.shards import write_shards

    directory = tmp_path_factory.mktemp("eval-shards")
    write_shards(
        [str(eval_jsonl)], directory, str(tokenizer_dir), valid_inputs=[str(eval_jsonl)], max_length=64,
        shard_size=12, progress=False,
    )
    return directory


@pytest.fixture(scope="session")
def eval_args() -> list[str]:
    return list(EVAL_ARGS)


@pytest.fixture(scope="session")
def one_rank_json(tiny_t5_dir, eval_jsonl, tmp_path_factory) -> Path:
    """`seq2vae eval` of the tiny T5 on the JSONL, one rank in-process: the result 2-rank runs must equal."""
    from seq2vae.evaluation.cli import main

    output = tmp_path_factory.mktemp("eval-1rank") / "eval-1rank.json"
    assert main(["--model", str(tiny_t5_dir), "--data", str(eval_jsonl), *EVAL_ARGS, "--output", str(output)]) == 0
    return output
