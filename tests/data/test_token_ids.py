"""Token ids outside the shards' vocabulary are corrupt samples: `error` names the shard and key, `skip`
skips and counts them (before, they crashed deep inside the embedding with an IndexError)."""

from __future__ import annotations

import pytest

from seq2vae.data.shards import load_meta
from seq2vae.data.stream import ShardError, build_loader, read_split


@pytest.fixture(scope="module")
def bad_ids(shard_dir, tmp_path_factory, out_of_range_copy):
    """(shard directory copy, the corrupt sample's key): train-000000.tar's sample 3 holds id 5000 (vocab < 1000)."""
    destination = tmp_path_factory.mktemp("bad-ids") / "shards"
    key = out_of_range_copy(shard_dir, destination, "train-000000.tar", 3, 5000)
    return destination, key


def _first_epoch(directory, on_corrupt: str, num_workers: int):
    loader = build_loader(
        directory, rank=0, world_size=1, batch_size=10, seed=0, pad_token_id=0, num_workers=num_workers,
        shuffle_buffer=0, on_corrupt=on_corrupt, with_keys=True,
    )
    keys = [key for _ in range(loader.batches_per_epoch) for key in next(loader)["keys"]]
    return loader, keys


@pytest.mark.parametrize("num_workers", [0, 2])
def test_on_corrupt_error_names_the_shard_and_sample_in_one_line(bad_ids, num_workers):
    directory, key = bad_ids
    with pytest.raises(ShardError) as raised:
        _first_epoch(directory, "error", num_workers)
    message = str(raised.value)
    vocab_size = load_meta(directory)["tokenizer"]["vocab_size"]
    assert key in message and "train-000000.tar" in message and "token id 5000" in message
    assert f"vocabulary of {vocab_size} tokens" in message
    assert "\n" not in message and "Traceback" not in message  # not a DataLoader worker's traceback text


def test_on_corrupt_skip_skips_and_counts_the_sample(bad_ids):
    directory, key = bad_ids
    loader, keys = _first_epoch(directory, "skip", 0)
    assert key not in keys and len(keys) == loader.samples_per_epoch
    assert [event["missing"] for event in loader.skipped] == [1] and key in loader.skipped[0]["error"]


def test_read_split_checks_ids_too(bad_ids):
    directory, key = bad_ids
    with pytest.raises(ShardError, match=key):
        list(read_split(directory, "train"))
