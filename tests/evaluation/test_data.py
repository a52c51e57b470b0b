"""Evaluation inputs: shard directories and text / JSONL files give the same samples."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from seq2vae.evaluation.data import EvalDataError, load_samples


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_shards_and_jsonl_give_the_same_sentences_ids_and_factors(eval_shard_dir, eval_jsonl, tokenizer):
    from_shards, shard_info = load_samples(eval_shard_dir, tokenizer, split="valid")
    from_jsonl, jsonl_info = load_samples(eval_jsonl, tokenizer)
    assert shard_info == {"kind": "shards", "split": "valid"} and jsonl_info["kind"] == "jsonl"
    assert len(from_shards) == len(from_jsonl) == 20
    for shard_sample, jsonl_sample in zip(from_shards, from_jsonl):
        assert shard_sample["text"] == jsonl_sample["text"]
        np.testing.assert_array_equal(shard_sample["input_ids"], jsonl_sample["input_ids"])
        assert shard_sample["meta"] == jsonl_sample["meta"]
        assert set(jsonl_sample["meta"]) == {"topic", "sentiment", "tense", "length"}
        assert jsonl_sample["input_ids"][-1] == tokenizer.eos_token_id
    assert len(load_samples(eval_shard_dir, tokenizer, split="valid", max_sentences=7)[0]) == 7


def test_text_input_skips_empty_lines_truncates_and_counts(tmp_path, tokenizer):
    path = tmp_path / "valid.txt"
    path.write_text("the cat sat .\n\n" + "word " * 50 + "\n")
    samples, info = load_samples(path, tokenizer, max_length=8)
    assert [s["text"] for s in samples][0] == "the cat sat ."
    assert info["skipped"] == {"empty": 1} and info["truncated"] == 1
    assert len(samples[1]["input_ids"]) == 8 and samples[1]["input_ids"][-1] == tokenizer.eos_token_id


def test_shards_from_another_tokenizer_are_refused(eval_shard_dir, tmp_path):
    from seq2vae.data.stream import TokenizerMismatchError
    from seq2vae.data.synthetic import generate_corpus
    from seq2vae.data.tokenizer import train_tokenizer

    other = train_tokenizer((row["text"] for row in generate_corpus(300, seed=5)), tmp_path / "other", vocab_size=300)
    with pytest.raises(TokenizerMismatchError):
        load_samples(eval_shard_dir, other, split="valid")


def test_bad_inputs_name_the_path(tmp_path, tokenizer):
    with pytest.raises(EvalDataError, match="does not exist"):
        load_samples(tmp_path / "missing.jsonl", tokenizer)
    with pytest.raises(EvalDataError, match="without meta.json"):
        load_samples(tmp_path, tokenizer)
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(EvalDataError, match="needs the model's tokenizer"):
        load_samples(tmp_path / "a.txt", None)


def test_evaluation_runs_without_deepspeed_imported(tiny_t5_dir, eval_shard_dir):
    """The whole `seq2vae eval` path, on shards, in a fresh interpreter: DeepSpeed never gets imported."""
    script = (
        "import sys\n"
        "from seq2vae.evaluation.cli import main\n"
        f"code = main(['--model', {str(tiny_t5_dir)!r}, '--data', {str(eval_shard_dir)!r}, '--iw-samples', '2',"
        " '--max-sentences', '4', '--max-reconstructions', '0', '--prior-samples', '0', '--interpolations', '0',"
        " '--device', 'cpu'])\n"
        "assert code == 0, code\n"
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "sentences" in completed.stdout and "IW-NLL" in completed.stdout
