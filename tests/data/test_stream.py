from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
import torch

from seq2vae.data.shards import MetaError, load_meta
from seq2vae.data.stream import ShardError, TokenizerMismatchError, build_loader, check_tokenizer, read_split

BATCH = 16


def loader(source, **overrides):
    settings = dict(rank=0, world_size=1, batch_size=BATCH, seed=5, pad_token_id=0, num_workers=0,
                    shuffle_buffer=32, with_keys=True)
    settings.update(overrides)
    return build_loader(source, **settings)


def take(data_loader, count: int) -> list[dict]:
    return [next(data_loader) for _ in range(count)]


def train_keys(shard_dir) -> list[str]:
    return [sample["key"] for sample in read_split(shard_dir, "train")]


def epoch_keys(shard_dir, world_size: int, num_workers: int, **overrides) -> tuple[list[list[str]], list]:
    per_rank, loaders = [], []
    for rank in range(world_size):
        data = loader(shard_dir, rank=rank, world_size=world_size, num_workers=num_workers, **overrides)
        per_rank.append([key for batch in take(data, data.batches_per_epoch) for key in batch["keys"]])
        loaders.append(data)
    return per_rank, loaders


def test_every_sample_once_per_epoch_across_two_ranks_and_two_workers(shard_dir):
    everything = train_keys(shard_dir)
    per_rank, loaders = epoch_keys(shard_dir, world_size=2, num_workers=2)
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen))
    assert set(seen) <= set(everything)
    first = loaders[0]
    assert all(data.batches_per_epoch == first.batches_per_epoch for data in loaders)
    assert len(per_rank[0]) == len(per_rank[1]) == first.batches_per_epoch * BATCH
    # The uneven remainder is reported, never silently lost.
    assert first.dropped_per_epoch == len(everything) - len(seen) == len(everything) % (2 * BATCH)
    assert 0 < first.dropped_per_epoch < 2 * BATCH


def test_batches_follow_the_contract_and_epochs_reshuffle(shard_dir):
    data = loader(shard_dir, num_workers=2)
    first = take(data, data.batches_per_epoch)
    assert data.state_dict()["epoch"] == 1 and data.state_dict()["batch"] == 0
    second = take(data, data.batches_per_epoch)
    batch = first[0]
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape[0] == BATCH
    assert torch.equal(batch["labels"], batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    keys = lambda batches: [k for b in batches for k in b["keys"]]  # noqa: E731
    assert len(set(keys(second))) == len(keys(second))
    assert keys(first) != keys(second)  # a new shard order and shuffle each epoch
    # Starting directly at epoch 1 gives that epoch's batches.
    assert keys(take(loader(shard_dir, num_workers=2, epoch=1), 5)) == keys(second[:5])


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers, stop_after", [(2, 7), (2, 0), (3, 1), (0, 5), (0, 30)])
def test_resume_yields_exactly_the_remainder(shard_dir, num_workers, stop_after):
    reference = loader(shard_dir, world_size=2, rank=1, num_workers=num_workers)
    per_epoch = reference.batches_per_epoch
    stop = per_epoch + stop_after  # mid-epoch in the second epoch (or at its start)
    expected = take(reference, stop + per_epoch // 2)
    interrupted = loader(shard_dir, world_size=2, rank=1, num_workers=num_workers)
    take(interrupted, stop)  # its workers have prefetched beyond this point
    state = json.loads(json.dumps(interrupted.state_dict()))
    assert (state["epoch"], state["batch"]) == (1, stop_after)
    resumed = loader(shard_dir, world_size=2, rank=1, num_workers=num_workers, state=state)
    for want, got in zip(expected[stop:], take(resumed, len(expected) - stop)):
        assert got["keys"] == want["keys"]
        assert torch.equal(got["input_ids"], want["input_ids"])


def test_resume_refuses_changed_settings(shard_dir):
    state = loader(shard_dir, num_workers=2).state_dict()
    with pytest.raises(ValueError, match="num_streams"):
        loader(shard_dir, num_workers=3, state=state)
    with pytest.raises(ValueError, match="batch_size"):
        loader(shard_dir, num_workers=2, batch_size=8, state=state)
    fewer_shards = [str(path) for path in sorted(shard_dir.glob("train-*.tar"))[:-1]]
    with pytest.raises(ValueError, match="shard list"):
        loader(fewer_shards, num_workers=2, state=state)
    assert len(json.dumps(state)) < 400  # small enough for every checkpoint


def test_length_bucketing_pads_less_and_keeps_exactly_once(shard_dir):
    def padding_fraction(data) -> float:
        batches = take(data, data.batches_per_epoch)
        return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)

    plain = padding_fraction(loader(shard_dir, num_workers=2))
    bucketed_loader = loader(shard_dir, num_workers=2, length_bucketing=True)
    assert padding_fraction(bucketed_loader) < 0.5 * plain
    per_rank, loaders = epoch_keys(shard_dir, world_size=2, num_workers=2, length_bucketing=True)
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == len(set(seen)) == 2 * loaders[0].batches_per_epoch * BATCH


def corrupted_copy(shard_dir, tmp_path, mode: str):
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    target = copy / "train-000003.tar"
    data = target.read_bytes()
    if mode == "truncate":
        target.write_bytes(data[: len(data) // 2 + 100])
    else:
        target.write_bytes(data[:20_000] + b"\x07" * 1024 + data[21_024:])
    return copy, target


@pytest.mark.parametrize("mode", ["truncate", "garble"])
def test_corrupt_shard_is_an_error_naming_it(shard_dir, tmp_path, mode):
    copy, target = corrupted_copy(shard_dir, tmp_path, mode)
    data = loader(copy, num_workers=2)
    with pytest.raises(ShardError, match=str(target)):
        take(data, data.batches_per_epoch)
    with pytest.raises(ShardError, match=str(target)):
        list(read_split(copy, "train"))


def test_corrupt_shard_skipped_on_request_keeps_batch_counts(shard_dir, tmp_path):
    copy, target = corrupted_copy(shard_dir, tmp_path, "truncate")
    counts = []
    skipped = []
    for rank in range(2):
        data = loader(copy, rank=rank, world_size=2, num_workers=2, on_corrupt="skip")
        batches = take(data, data.batches_per_epoch)
        counts.append(len(batches))
        assert all(b["input_ids"].shape[0] == BATCH for b in batches)
        skipped += data.skipped
    assert counts[0] == counts[1]
    assert {event["shard"] for event in skipped} == {str(target)}
    assert 0 < sum(event["missing"] for event in skipped) < 100


def test_corrupt_sample_is_named_or_skipped(shard_dir, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    target = copy / "train-000001.tar"
    with tarfile.open(shard_dir / "train-000001.tar") as source, tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as sink:
        for index, info in enumerate(source):
            data = source.extractfile(info).read()
            if index == 6:  # the third sample's input_ids.npy (members sort as ids, meta, text)
                assert info.name.endswith(".input_ids.npy")
                bad_key, data = info.name.split(".")[0], b"\x93NUMPY\x01\x00garbage"
                info.size = len(data)
            sink.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match=f"corrupt sample '{bad_key}' in shard {target}"):
        list(read_split(copy, "train"))
    data = loader(copy, num_workers=2)
    with pytest.raises(ShardError, match=bad_key):
        take(data, data.batches_per_epoch)
    counts, skipped = [], []
    for rank in range(2):
        data = loader(copy, rank=rank, world_size=2, num_workers=2, on_corrupt="skip")
        seen = [key for batch in take(data, data.batches_per_epoch) for key in batch["keys"]]
        assert bad_key not in seen
        counts.append(len(seen))
        skipped += data.skipped
    assert counts[0] == counts[1]
    assert [(event["shard"], event["missing"]) for event in skipped] == [(str(target), 1)]


def test_missing_meta_and_unlisted_shards_fail_before_training(shard_dir, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    (copy / "meta.json").unlink()
    with pytest.raises(MetaError, match="meta.json not found"):
        loader(copy)
    with pytest.raises(MetaError, match="meta.json"):
        loader(str(copy / "train-000000.tar"))
    stray = tmp_path / "extra" / "train-000099.tar"
    stray.parent.mkdir()
    shutil.copy(shard_dir / "train-000000.tar", stray)
    shutil.copy(shard_dir / "meta.json", stray.parent / "meta.json")
    with pytest.raises(MetaError, match="not listed"):
        loader([str(stray)])
    with pytest.raises(ValueError, match="fewer than world size"):
        loader(shard_dir, world_size=2, batch_size=10_000)


def test_url_sources_read_the_same_samples(shard_dir):
    meta = load_meta(shard_dir)
    names = [entry["name"] for entry in meta["splits"]["train"]["shards"]]
    last = len(names) - 1
    sources = [
        [str(shard_dir / name) for name in names],
        f"{shard_dir}/train-{{000000..{last:06d}}}.tar",
        [f"pipe:cat {shard_dir / name}" for name in names],
    ]
    expected = [b["keys"] for b in take(loader(shard_dir), 10)]
    for source in sources:
        assert [b["keys"] for b in take(loader(source), 10)] == expected
    assert [s["key"] for s in read_split(sources[2], "train")] == train_keys(shard_dir)


def test_tokenizer_check(shard_dir, tokenizer, tokenizer_dir, tmp_path):
    from seq2vae.data.synthetic import generate_corpus
    from seq2vae.data.tokenizer import train_tokenizer

    check_tokenizer(shard_dir, tokenizer)
    check_tokenizer(load_meta(shard_dir), str(tokenizer_dir))
    other = train_tokenizer((row["text"] for row in generate_corpus(500, seed=9)), tmp_path / "other", vocab_size=300)
    with pytest.raises(TokenizerMismatchError, match="vocab_size"):
        check_tokenizer(shard_dir, other)
