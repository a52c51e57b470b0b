"""`seq2vae eval` end to end: one rank in-process, two ranks under a real torchrun (gloo), --compare,
and clear errors for empty or wrong inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seq2vae.cli import main as seq2vae_main
from seq2vae.evaluation.cli import main

WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture(scope="module")
def two_rank_dir(tiny_t5_dir, eval_jsonl, eval_args, launch, tmp_path_factory) -> Path:
    """Runs distributed_worker.py under torchrun with 2 gloo ranks; returns its output directory."""
    output_dir = tmp_path_factory.mktemp("eval-2ranks")
    completed = launch.run([str(WORKER), str(tiny_t5_dir), str(eval_jsonl), str(output_dir), *eval_args])
    assert completed.returncode == 0, launch.tail(completed)
    return output_dir


def test_one_rank_output_records_conventions_versions_and_prints_a_table(one_rank_json, capsys):
    record = json.loads(one_rank_json.read_text())
    assert record["iw_samples"] == 6 and record["seed"] == 3 and record["model_kind"] == "pretrained"
    assert {"torch", "transformers", "seq2vae"} <= set(record["versions"])
    assert "mi_dataset" in record["conventions"] and "EOS" in record["conventions"]["ppl_per_token"]
    assert record["data_info"]["kind"] == "jsonl" and record["world_size"] == 1


@pytest.mark.slow
def test_two_ranks_give_the_same_results_as_one(one_rank_json, two_rank_dir):
    one = json.loads(one_rank_json.read_text())
    two = json.loads((two_rank_dir / "eval-2ranks.json").read_text())
    assert two["world_size"] == 2
    # Exact equality: the same batches and the same per-sentence draws, gathered in global order.
    assert two["metrics"] == one["metrics"]
    for key in ("reconstruction", "probes", "prior_samples", "interpolations", "notes"):
        assert two[key] == one[key], key


@pytest.mark.slow
def test_validate_with_uneven_batches_on_two_ranks_agrees_and_does_not_hang(two_rank_dir, tiny_t5_dir, eval_jsonl):
    from seq2vae.data.collate import collate
    from seq2vae.evaluation.data import load_samples
    from seq2vae.evaluation.harness import validate
    from seq2vae.model import Seq2SeqVAE

    rank0 = json.loads((two_rank_dir / "validate-rank0.json").read_text())
    rank1 = json.loads((two_rank_dir / "validate-rank1.json").read_text())
    assert rank0 == rank1
    assert rank0["num_sentences"] == 16  # rank 0's 12 + rank 1's 4; rank 1's dummy rounds dropped
    # KL and active units depend on mu only (not on the per-rank draws): equal to one process on the same batches.
    vae = Seq2SeqVAE.from_pretrained(tiny_t5_dir)
    samples, _ = load_samples(eval_jsonl, vae.tokenizer)
    batches = [collate(samples[i : i + 4], vae.tokenizer.pad_token_id) for i in range(0, 16, 4)]
    single = validate(vae, batches, num_samples=3, max_batches=None, num_reconstructions=0)
    assert rank0["kl"] == pytest.approx(single["kl"], rel=1e-6)
    assert rank0["active_units"] == single["active_units"] and rank0["num_tokens"] == single["num_tokens"]


@pytest.mark.slow
def test_compare_prints_runs_side_by_side(one_rank_json, two_rank_dir, capsys):
    assert main(["--compare", str(one_rank_json), str(two_rank_dir / "eval-2ranks.json")]) == 0
    table = capsys.readouterr().out
    assert "eval-1rank" in table and "eval-2ranks" in table
    kl_row = next(line for line in table.splitlines() if line.startswith("KL (nats/sentence)"))
    kl = json.loads(one_rank_json.read_text())["metrics"]["kl"]
    assert kl_row.split()[2:] == [f"{kl:.2f}", f"{kl:.2f}"]  # one column per run


def test_empty_input_and_wrong_model_fail_with_clear_messages(tiny_t5_dir, eval_args, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["--model", str(tiny_t5_dir), "--data", str(empty), *eval_args]) == 1
    message = capsys.readouterr().err
    assert "no sentences to evaluate" in message and "2 lines read" in message and "2 empty" in message
    assert seq2vae_main(["eval", "--model", str(tmp_path), "--data", str(empty), *eval_args]) == 2
    assert "neither a saved model" in capsys.readouterr().err
    assert seq2vae_main(["eval", "--model", str(tiny_t5_dir), "--data", str(tmp_path / "missing.txt"), *eval_args]) == 2
    assert "does not exist" in capsys.readouterr().err
