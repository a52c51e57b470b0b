"""Resuming the training loader on another world size: the epoch's unread samples are spread over the
new ranks, so across the interrupted and the resumed run no sample repeats and none is skipped (beyond
the fewer-than-one-global-batch tail every epoch leaves out)."""

from __future__ import annotations

import json

import pytest

from seq2vae.data.stream import build_loader, read_split

BATCH = 8


def loader(shard_dir, rank, world_size, num_workers=0, **overrides):
    settings = dict(batch_size=BATCH, seed=3, pad_token_id=0, shuffle_buffer=24, with_keys=True)
    settings.update(overrides)
    return build_loader(shard_dir, rank=rank, world_size=world_size, num_workers=num_workers, **settings)


def run_world(shard_dir, world_size, batches, state=None, num_workers=0):
    """`batches` batches on each of `world_size` ranks (from `state`): (keys read, the states afterwards)."""
    keys, states = [], []
    for rank in range(world_size):
        data = loader(shard_dir, rank, world_size, num_workers, state=state)
        for _ in range(batches(data) if callable(batches) else batches):
            keys.extend(next(data)["keys"])
        states.append(json.loads(json.dumps(data.state_dict())))
    assert all(state == states[0] for state in states)  # every rank is at the same place
    return keys, states[0]


def rest_of_epoch(data) -> int:
    """Batches left in the loader's current epoch."""
    return data._settings.plan.batches_in(data.epoch) - data.batch_in_epoch


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("worlds, stop, num_workers", [((2, 1), 5, 0), ((1, 2), 7, 2), ((2, 3, 1), 4, 0)])
def test_every_sample_of_the_epoch_once_across_world_sizes(shard_dir, worlds, stop, num_workers):
    everything = {sample["key"] for sample in read_split(shard_dir, "train")}
    keys, state = run_world(shard_dir, worlds[0], stop, num_workers=num_workers)
    for middle in worlds[1:-1]:  # resharded again inside the resharded epoch
        more, state = run_world(shard_dir, middle, 3, state, num_workers)
        keys += more
        assert state["segments"] and state["epoch"] == 0
    more, state = run_world(shard_dir, worlds[-1], rest_of_epoch, state, num_workers)
    keys += more
    assert state["epoch"] == 1 and state["batch"] == 0 and "segments" not in state
    assert len(keys) == len(set(keys)), "a sample repeated within the epoch"
    left_out = everything - set(keys)
    # Only a tail smaller than one global batch of the last world size is left out.
    assert len(left_out) < worlds[-1] * BATCH, (len(left_out), len(everything))
    # The next epoch is a normal full epoch on the new world size.
    data = loader(shard_dir, 0, worlds[-1], num_workers, state=state)
    assert data.batches_per_epoch == len(everything) // (worlds[-1] * BATCH)


def test_resume_mid_resharded_epoch_on_the_same_world_is_exact(shard_dir):
    _, state = run_world(shard_dir, 2, 5)
    reference = loader(shard_dir, 0, 1, state=state)
    expected = [next(reference)["keys"] for _ in range(6)]
    first = loader(shard_dir, 0, 1, state=state)
    got = [next(first)["keys"] for _ in range(2)]
    resumed = loader(shard_dir, 0, 1, state=json.loads(json.dumps(first.state_dict())))
    got += [next(resumed)["keys"] for _ in range(4)]
    assert got == expected


def test_length_bucketing_cannot_be_resharded_mid_epoch(shard_dir):
    data = loader(shard_dir, 0, 2, length_bucketing=True)
    next(data)
    with pytest.raises(ValueError, match="length bucketing"):
        loader(shard_dir, 0, 1, length_bucketing=True, state=data.state_dict())
