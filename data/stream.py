"""Streaming shards into training batches: exact per-rank counts, seeded shuffling, exact resume.

Public API:
- `build_loader(source, split="train", *, rank, world_size, batch_size, seed, pad_token_id, ...)`:
  a `ShardLoader`, an iterator that never ends (epochs follow one another, each reshuffled with
  seed and epoch) and yields batches in the data -> model contract of `seq2vae.data.collate`.
- `read_split(source, split="valid")`: a sequential single-process reader of one split, yielding
  `{"key", "input_ids" (np.int32), "text", "meta"}` (evaluation, validation).
- `check_tokenizer(meta, tokenizer)`: `meta` is a dict from `load_meta` or a shard source (directory,
  meta.json path, shard URL); `tokenizer` a loaded Hugging Face tokenizer or a name/path for
  `AutoTokenizer`. Raises `TokenizerMismatchError` (a ValueError) naming both tokenizers when the
  vocabularies or the pad/EOS ids differ; call it before training starts.

`source` is a shard directory, its meta.json, or shard URLs that webdataset opens (a list, a brace
pattern such as `/data/train-{000000..000099}.tar`, `::`-separated, `pipe:` or http URLs); the
meta.json beside the first URL gives the per-shard sample counts. URLs must be shards listed there.

How an epoch is laid out. All ranks compute the same plan from meta.json (a rank with fewer samples
than the others would stop early and hang the next collective, so the counts decide, not the reads):
1. The split's shards are permuted with (seed, epoch) and concatenated into one sequence of N samples.
2. Rank r takes the contiguous range [r*P, (r+1)*P) with P = batches_per_epoch * batch_size and
   batches_per_epoch = N // (world_size * batch_size); the last N - world_size*P samples (fewer than
   world_size * batch_size) are `dropped_per_epoch`, a different tail every epoch since the order
   changes. So every rank takes exactly the same number of steps and no sample repeats in an epoch.
3. A rank's range is cut into `num_streams = max(1, num_workers)` contiguous streams; stream l holds
   the rank's batches j with j % num_streams == l. A stream reads only the shards overlapping its
   range (skipping to its first sample), shuffles its samples in blocks of `shuffle_buffer` samples
   (rounded up to whole batches; each block fully permuted with a seed of epoch, rank, stream and
   block), optionally sorts pools of batches by length (bucketing) and cuts batches.
4. DataLoader worker i produces every num_streams-th batch handed out, so the DataLoader's in-order
   round-robin returns the rank's batches in the planned order, across epoch boundaries too.

Resume: `state_dict()` is `{"epoch", "batch"}` (the next batch to hand out) plus the settings that
shape the order; `build_loader(..., state=...)` (or `load_state_dict`) continues with exactly the
batches the uninterrupted run would have produced. Because shuffling works in independent blocks, a
stream restarts at the block holding its next batch: shards before it are skipped by their counts,
so a resume reads at most one shard prefix and one block, however far into the epoch it is. World size,
batch size, workers, seed, shuffle buffer, bucketing and shards
must match (ValueError naming the differences otherwise), except the world size: a state saved on W
ranks loaded on W' ranks (`EpochPlan.resharded`) spreads the current epoch's samples that no rank has
consumed yet (replayed from the saved position, no data read) over the W' ranks; the state then
carries "segments", the epoch's earlier stretches, so it can be resumed or resharded again.

Corrupt or truncated shards raise `ShardError` naming the shard; a sample whose token ids fall outside
the vocabulary in meta.json is corrupt too (it would index past the model's embedding). With `on_corrupt="skip"` the shard's
missing samples are replaced by repeats of samples the stream already read (so every rank still yields
`batches_per_epoch` batches and no collective waits), counted in `ShardLoader.skipped` and logged.
(After a resume, those replacement repeats may be other samples than in the uninterrupted run.)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import UserError
from .collate import collate_numpy
from .shards import META_FILENAME, MetaError, decode_ids, decode_sample, load_meta, split_shards

logger = logging.getLogger(__name__)

OnCorrupt = Literal["error", "skip"]
BUCKET_POOL_BATCHES = 50  # length bucketing sorts pools of this many batches: similar lengths, still mixed
STATE_VERSION = 1
REFILL_POOL = 1024
WORKER_TIMEOUT_S = 600  # samples kept per stream to replace a skipped corrupt shard's samples


class ShardError(UserError, RuntimeError):
    """A corrupt, truncated or unreadable shard; the message names it."""


class LoaderStateError(UserError, ValueError):
    """A saved data-loader position that does not fit the current data or loader settings."""


class TokenizerMismatchError(UserError, ValueError):
    """The shards were tokenised with a different tokenizer than the training configuration's."""


@dataclasses.dataclass(frozen=True)
class Shard:
    url: str
    name: str
    num_samples: int


# ---------------------------------------------------------------------------------------------------------
# Sources


def _expand_urls(source: str | Sequence[str]) -> list[str]:
    from webdataset.shardlists import expand_urls

    if isinstance(source, (str, os.PathLike)):
        return expand_urls(str(source))
    return [str(url) for url in source]


def _shard_name(url: str) -> str:
    """The shard file name inside a URL, a path or a `pipe:` command (its last *.tar word)."""
    words = [word.strip("'\"") for word in url.replace("\\", "/").split()]
    tars = [word for word in words if word.endswith(".tar")]
    return (tars[-1] if tars else url).rsplit("/", 1)[-1]


def _is_directory_source(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and (str(source).endswith(META_FILENAME) or Path(source).is_dir())


def load_source_meta(source: str | os.PathLike | Sequence[str]) -> dict[str, Any]:
    """The meta.json of any shard source: a directory, a meta.json path, or the directory of its first URL."""
    if _is_directory_source(source):
        return load_meta(source)
    urls = _expand_urls(source)
    if not urls:
        raise MetaError(f"shard source {source!r} names no shards")
    return load_meta(urls[0])


def open_source(source: str | os.PathLike | Sequence[str], split: str) -> tuple[dict[str, Any], list[Shard]]:
    """Reads the meta.json of `source` and returns it with the split's shards in meta.json order."""
    meta = load_source_meta(source)
    if _is_directory_source(source):
        base = Path(meta["location"]).parent
        return meta, [Shard(str(base / e["name"]), e["name"], int(e["num_samples"])) for e in split_shards(meta, split)]
    urls = _expand_urls(source)
    known = {
        entry["name"]: (name, int(entry["num_samples"]))
        for name, split_entry in meta["splits"].items()
        for entry in split_entry.get("shards", [])
    }
    shards = []
    for url in urls:
        name = _shard_name(url)
        if name not in known:
            raise MetaError(f"shard {url} is not listed in {meta['location']}: shards must come with their meta.json")
        if known[name][0] == split:
            shards.append(Shard(url, name, known[name][1]))
    if not shards:
        raise MetaError(f"none of the {len(urls)} shard URLs in {source!r} belong to split {split!r}")
    return meta, shards


# ---------------------------------------------------------------------------------------------------------
# Reading one shard


def iter_shard(shard: Shard, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples `start:stop` of `shard` (bytes fields, as stored).

    Raises:
        ShardError naming the shard when it cannot be opened or read, or holds fewer samples than
        meta.json says (a truncated copy can end cleanly at a member boundary).
    """
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys, tar_file_expander

    stop = shard.num_samples if stop is None else stop
    count = 0
    stream = None
    try:
        stream = gopen(shard.url, "rb")
        files = tar_file_expander([{"url": shard.url, "stream": stream}])
        for raw in group_by_keys(files):
            if count >= stop:
                break
            if count >= start:
                yield raw
            count += 1
    except (GeneratorExit, ShardError):
        raise
    except Exception as error:
        raise ShardError(f"corrupt shard {shard.url}: {type(error).__name__}: {error}") from error
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception:  # a pipe closed early reports its command's status; the data read was complete
                pass
    if count < stop:
        # tarfile's stream reader ends quietly at a damaged header after the first, so a short count
        # is either a damaged header or a cut-off file; a local shard's headers tell which.
        damage = damaged_tar_header(shard.url)
        if damage:
            raise ShardError(f"corrupt shard {shard.url}: {damage} ({count} of {shard.num_samples} samples readable)")
        raise ShardError(f"truncated shard {shard.url}: {count} samples, meta.json says {shard.num_samples}")


def damaged_tar_header(url: str) -> str | None:
    """Describes the first header of a local tar file that does not parse ("bad tar header at byte N"),
    or None (remote shards, and files that simply end early: truncated, not corrupt)."""
    import tarfile

    if "://" in url or url.startswith("pipe:") or not os.path.isfile(url):
        return None
    size = os.path.getsize(url)
    with open(url, "rb") as stream:
        offset = 0
        while offset + 512 <= size:
            stream.seek(offset)
            block = stream.read(512)
            if block == bytes(512):
                return None  # the end-of-archive marker: the headers before it were all sound
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as error:
                return f"bad tar header at byte {offset} ({error})"
            offset += 512 + -(-info.size // 512) * 512
    return None


def read_split(source: str | os.PathLike | Sequence[str], split: str = "valid") -> Iterator[dict[str, Any]]:
    """Yields `{"key", "input_ids" (np.int32 [S]), "text", "meta"}` for every sample of `split`, in order."""
    meta, shards = open_source(source, split)
    vocab_size = meta["tokenizer"].get("vocab_size")
    for shard in shards:
        for raw in iter_shard(shard):
            try:
                sample = decode_sample(raw)
                check_id_range(sample["input_ids"], vocab_size)
                yield sample
            except ValueError as error:
                raise ShardError(f"corrupt sample {raw.get('__key__')!r} in shard {shard.url}: {error}") from None


# ---------------------------------------------------------------------------------------------------------
# The epoch plan


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of one epoch run on another world size before a resume (see `resharded`)."""

    world_size: int
    num_streams: int
    batches: int  # batches every rank took in this stretch
    block_size: int  # the shuffle block of that loader (samples)
    shuffle: bool


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """Which samples each rank and stream reads in an epoch; identical on every rank (see module docstring).

    `segments` (for epoch `segments_epoch` only) record earlier stretches of that epoch run on other world
    sizes: the epoch then spreads only the samples those stretches did not consume (see `resharded`).
    """

    shards: tuple[Shard, ...]
    world_size: int
    batch_size: int
    num_streams: int
    seed: int
    segments: tuple[Segment, ...] = ()
    segments_epoch: int = -1

    @property
    def num_samples(self) -> int:
        return sum(shard.num_samples for shard in self.shards)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.world_size * self.batch_size)

    @property
    def dropped_per_epoch(self) -> int:
        return self.num_samples - self.world_size * self.batches_per_epoch * self.batch_size

    def stream_batches(self, stream: int) -> int:
        """How many of a rank's batches stream `stream` holds (those j with j % num_streams == stream)."""
        total = self.batches_per_epoch
        return total // self.num_streams + (1 if stream < total % self.num_streams else 0)

    def shard_order(self, epoch: int) -> list[Shard]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return [self.shards[i] for i in order]

    def stream_range(self, rank: int, stream: int) -> tuple[int, int]:
        """[start, stop) of the stream's samples in the epoch's concatenated shard order."""
        start = rank * self.batches_per_epoch * self.batch_size
        start += sum(self.stream_batches(s) for s in range(stream)) * self.batch_size
        return start, start + self.stream_batches(stream) * self.batch_size

    # ----- epochs resharded on a world-size change: positions index the epoch's concatenated shard order
    def positions(self, epoch: int) -> np.ndarray:
        """The epoch-order positions this plan spreads over its ranks (all of them, unless resharded)."""
        if epoch != self.segments_epoch or not self.segments:
            return np.arange(self.num_samples)
        return _remaining_positions(self, epoch)

    def batches_in(self, epoch: int) -> int:
        if epoch != self.segments_epoch or not self.segments:
            return self.batches_per_epoch
        return len(self.positions(epoch)) // (self.world_size * self.batch_size)

    def stream_positions(self, epoch: int, rank: int, stream: int) -> np.ndarray:
        """Sorted positions of the stream's samples in `epoch` (the general form of `stream_range`)."""
        total = self.batches_in(epoch)
        counts = [total // self.num_streams + (1 if s < total % self.num_streams else 0) for s in range(self.num_streams)]
        start = rank * total * self.batch_size + sum(counts[:stream]) * self.batch_size
        return self.positions(epoch)[start : start + counts[stream] * self.batch_size]

    def consumed_positions(self, epoch: int, rank: int, batches: int, block_size: int, shuffle: bool) -> np.ndarray:
        """Positions of the samples in the rank's first `batches` batches of `epoch`.

        Mirrors `_BatchStream._epoch_batches` without reading data: stream l holds the rank's batches
        j with j % num_streams == l, cut from its positions shuffled block by block. (Not for length
        bucketing, whose batch order depends on the samples' lengths.)
        """
        taken = []
        for stream in range(self.num_streams):
            count = max(0, -(-(batches - stream) // self.num_streams)) * self.batch_size  # samples read by this stream
            positions = self.stream_positions(epoch, rank, stream)
            for block_index, block_start in enumerate(range(0, count, block_size)):
                block = positions[block_start : block_start + block_size]
                if shuffle:
                    block = block[_rng(self.seed, epoch, rank, stream, block_index).permutation(len(block))]
                taken.append(block[: count - block_start])
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)

    def resharded(self, epoch: int, batches_done: int, world_size: int, block_size: int, shuffle: bool) -> EpochPlan:
        """This plan's position (`batches_done` batches of `epoch` on every rank) continued on `world_size`
        ranks: the new plan spreads the epoch's samples that no rank has consumed yet (including the
        tail this plan left out) evenly over the new ranks; later epochs are planned as usual."""
        segments = self.segments if epoch == self.segments_epoch else ()
        segment = Segment(self.world_size, self.num_streams, batches_done, block_size, shuffle)
        return dataclasses.replace(self, world_size=world_size, segments=(*segments, segment), segments_epoch=epoch)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that determine the order of batches; resuming requires them unchanged."""
        return {
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "num_streams": self.num_streams,
            "seed": self.seed,
            # A digest keeps the state small however many shards there are.
            "shards": hashlib.sha256(
                "\n".join(f"{shard.name}:{shard.num_samples}" for shard in self.shards).encode("utf-8")
            ).hexdigest()[:16],
        }


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


@functools.lru_cache(maxsize=4)
def _remaining_positions(plan: EpochPlan, epoch: int) -> np.ndarray:
    """Replays the plan's segments: the sorted positions of `epoch` none of them consumed."""
    remaining = np.arange(plan.num_samples)
    for index, segment in enumerate(plan.segments):
        earlier = dataclasses.replace(
            plan, world_size=segment.world_size, num_streams=segment.num_streams, segments=plan.segments[:index]
        )
        consumed = np.concatenate(
            [
                earlier.consumed_positions(epoch, rank, segment.batches, segment.block_size, segment.shuffle)
                for rank in range(segment.world_size)
            ]
        )
        remaining = np.setdiff1d(earlier.positions(epoch), consumed, assume_unique=True)
    return remaining


class _SkipLog:
    """Corrupt shards a stream skipped since the last batch (reported to the main process with it)."""

    def __init__(self):
        self.events: list[dict[str, Any]] = []

    def take(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


def _decoded(raw: dict[str, Any], shard: Shard, vocab_size: int | None) -> dict[str, Any]:
    """The raw sample with its ids decoded ("input_ids"); ShardError naming the sample and shard if it is bad."""
    try:
        raw["input_ids"] = decode_ids(raw["input_ids.npy"])
        check_id_range(raw["input_ids"], vocab_size)
    except (KeyError, ValueError) as error:
        problem = "no input_ids.npy" if isinstance(error, KeyError) else str(error)
        raise ShardError(f"corrupt sample {raw.get('__key__')!r} in shard {shard.url}: {problem}") from None
    return raw


def check_id_range(input_ids: np.ndarray, vocab_size: int | None) -> None:
    """ValueError unless every id indexes the vocabulary of `vocab_size` tokens (meta.json's tokenizer).

    An id outside it would index past the embedding table, deep inside the model's forward pass."""
    if vocab_size is None or input_ids.size == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"token id {bad} is outside the vocabulary of {vocab_size} tokens (meta.json)")


def _read_range(
    order: Sequence[Shard], start: int, stop: int, on_corrupt: OnCorrupt, skip_log: _SkipLog, vocab_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """Samples [start, stop) of the concatenation of `order` (ids decoded), exactly stop - start of them."""
    produced = 0
    refill: list[dict[str, Any]] = []
    offset = 0
    for shard in order:
        first, last = max(start - offset, 0), min(stop - offset, shard.num_samples)
        offset += shard.num_samples
        if first >= last:
            if offset >= stop:
                break
            continue
        consumed = 0
        try:
            for raw in iter_shard(shard, first, last):
                consumed += 1
                try:
                    sample = _decoded(raw, shard, vocab_size)
                except ShardError as error:
                    if on_corrupt == "error":
                        raise
                    _skip(skip_log, shard, 1, error)
                    continue
                if len(refill) < REFILL_POOL:
                    refill.append(sample)
                produced += 1
                yield sample
        except ShardError as error:
            if on_corrupt == "error":
                raise
            _skip(skip_log, shard, (last - first) - consumed, error)
    missing = (stop - start) - produced
    if missing and not refill:
        raise ShardError(f"every shard read by this stream was corrupt ({[e['shard'] for e in skip_log.events]})")
    for index in range(missing):
        yield refill[index % len(refill)]


def _read_positions(
    order: Sequence[Shard], positions: np.ndarray, on_corrupt: OnCorrupt, skip_log: _SkipLog, vocab_size: int | None = None
) -> Iterator[dict[str, Any]]:
    """The samples at sorted `positions` of the concatenation of `order`: contiguous runs are read with
    `_read_range` (a resharded epoch's positions are runs with gaps where earlier ranks already read)."""
    if len(positions) == 0:
        return
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    for run in np.split(positions, breaks):
        yield from _read_range(order, int(run[0]), int(run[-1]) + 1, on_corrupt, skip_log, vocab_size)


def _skip(skip_log: _SkipLog, shard: Shard, missing: int, error: ShardError) -> None:
    logger.warning("skipping %d corrupt samples (replaced by repeats of earlier ones): %s", missing, error)
    skip_log.events.append({"shard": shard.url, "missing": missing, "error": str(error)})


def _block_batches(
    block: list[dict[str, Any]], batch_size: int, shuffle: bool, length_bucketing: bool, rng: np.random.Generator
) -> Iterator[list[dict[str, Any]]]:
    """The batches of one shuffle block: the block permuted, then cut into batches; with bucketing,
    pools of BUCKET_POOL_BATCHES batches are sorted by length and their batches emitted in a random
    order (similar lengths pad less; the order stays seeded)."""
    if shuffle:
        block = [block[i] for i in rng.permutation(len(block))]
    pool_size = batch_size * (BUCKET_POOL_BATCHES if length_bucketing else 1)
    for pool_start in range(0, len(block), pool_size):
        pool = block[pool_start : pool_start + pool_size]
        assert len(pool) % batch_size == 0, "a stream always holds whole batches"
        if length_bucketing:
            pool.sort(key=lambda sample: len(sample["input_ids"]))
        batches = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        yield from (batches[i] for i in rng.permutation(len(batches))) if length_bucketing else batches


# ---------------------------------------------------------------------------------------------------------
# The loader


@dataclasses.dataclass(frozen=True)
class _StreamSettings:
    plan: EpochPlan
    rank: int
    pad_token_id: int
    shuffle_buffer: int
    length_bucketing: bool
    on_corrupt: OnCorrupt
    with_keys: bool
    vocab_size: int | None = None  # meta.json's tokenizer vocabulary: ids at or above it are corrupt

    @property
    def block_size(self) -> int:
        """Samples per shuffle block: shuffle_buffer rounded up to whole batches (whole bucketing pools)."""
        unit = self.plan.batch_size * (BUCKET_POOL_BATCHES if self.length_bucketing else 1)
        return max(1, -(-self.shuffle_buffer // unit)) * unit


class _BatchStream(IterableDataset):
    """Runs in each DataLoader worker: worker i yields the i-th, (i+W)-th, ... batches from the resume point.

    Each yielded item is (batch, (epoch, batch index in the epoch), skipped-shard events).
    """

    def __init__(self, settings: _StreamSettings, start_epoch: int, start_batch: int):
        self.settings, self.start_epoch, self.start_batch = settings, start_epoch, start_batch

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        plan = self.settings.plan
        width = plan.num_streams
        epoch, first = self.start_epoch, self.start_batch
        handed_before_epoch = -self.start_batch  # batches handed out (from the resume point) before `epoch` began
        while True:
            # This worker serves the batches j of this epoch with (handed_before_epoch + j) % width == worker,
            # which is one stream l (the rank's batches with j % width == l).
            stream = (worker - handed_before_epoch) % width
            skip = max(0, -(-(first - stream) // width))  # stream batches before the resume point
            try:
                yield from self._epoch_batches(epoch, stream, skip)
            except ShardError as error:
                # Handed over as a value: a DataLoader worker's exception reaches the main process as
                # the text of its whole traceback, and the user should read one line.
                yield _Failure(str(error)), None, []
                return
            handed_before_epoch += plan.batches_in(epoch)  # fewer in an epoch resharded mid-way
            epoch, first = epoch + 1, 0

    def _epoch_batches(self, epoch: int, stream: int, skip: int):
        """Stream `stream`'s batches of `epoch` from its batch `skip` on. Samples are shuffled in blocks of
        `block_size` (each fully permuted), so resuming re-reads at most one block, never the epoch so far."""
        settings, plan = self.settings, self.settings.plan
        block_size, batch_size = settings.block_size, plan.batch_size
        skip_log = _SkipLog()
        first_block = skip * batch_size // block_size
        # Shards wholly before the first needed block are skipped by their meta.json counts, unread.
        if epoch == plan.segments_epoch and plan.segments:
            positions = plan.stream_positions(epoch, settings.rank, stream)[first_block * block_size :]
            samples = _read_positions(plan.shard_order(epoch), positions, settings.on_corrupt, skip_log, settings.vocab_size)
        else:
            start, stop = plan.stream_range(settings.rank, stream)
            samples = _read_range(
                plan.shard_order(epoch), start + first_block * block_size, stop, settings.on_corrupt, skip_log,
                settings.vocab_size,
            )
        index = first_block * (block_size // batch_size)
        for block_index in itertools.count(first_block):
            block = list(itertools.islice(samples, block_size))
            if not block:
                return
            rng = _rng(plan.seed, epoch, settings.rank, stream, block_index)
            for batch in _block_batches(block, batch_size, settings.shuffle_buffer > 1, settings.length_bucketing, rng):
                if index >= skip:
                    yield self._collate(batch), (epoch, index * plan.num_streams + stream), skip_log.take()
                index += 1

    def _collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_numpy(samples, self.settings.pad_token_id)
        if self.settings.with_keys:
            batch["keys"] = [sample["__key__"] for sample in samples]
        return batch


def _as_is(item):
    return item


@dataclasses.dataclass(frozen=True)
class _Failure:
    """A stream's ShardError, travelling to the main process in place of a batch."""

    message: str


class ShardLoader:
    """Endless iterator of training batches for one rank; see the module docstring for the guarantees.

    Attributes:
        batches_per_epoch: batches every rank yields per epoch (from meta.json alone); fewer in the rest of
            an epoch resharded by a world-size change (`plan.batches_in(epoch)`).
        dropped_per_epoch: samples per epoch that cannot be spread evenly over ranks x batch size.
        samples_per_epoch: samples this rank sees per epoch.
        skipped: corrupt-shard events ({"shard", "missing", "error"}) seen so far (on_corrupt="skip").
        epoch: the epoch of the next batch.
    """

    def __init__(self, settings: _StreamSettings, num_workers: int, meta: dict[str, Any], state: dict | None):
        self._settings = settings
        self._num_workers = num_workers
        self.meta = meta
        plan = settings.plan
        self.batches_per_epoch = plan.batches_per_epoch
        self.dropped_per_epoch = plan.dropped_per_epoch
        self.samples_per_epoch = plan.batches_per_epoch * plan.batch_size
        self.skipped: list[dict[str, Any]] = []
        self.epoch, self.batch_in_epoch = 0, 0
        self._iterator = None
        if state is not None:
            self.load_state_dict(state)

    def _fingerprint(self) -> dict[str, Any]:
        settings = self._settings
        return {
            **settings.plan.fingerprint(),
            "shuffle_buffer": settings.shuffle_buffer,
            "length_bucketing": settings.length_bucketing,
        }

    def state_dict(self) -> dict[str, Any]:
        """The position after the batches handed out so far (not what workers prefetched); JSON-able.

        Inside an epoch that was resharded, "segments" records the earlier world sizes' stretches of it.
        """
        state = {"version": STATE_VERSION, "epoch": self.epoch, "batch": self.batch_in_epoch, **self._fingerprint()}
        plan = self._settings.plan
        if plan.segments and plan.segments_epoch == self.epoch:
            state["segments"] = [dataclasses.asdict(segment) for segment in plan.segments]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state` (restarts the workers if they were running)."""
        if state.get("version") != STATE_VERSION:
            raise LoaderStateError(f"data loader state version {state.get('version')!r}; expected {STATE_VERSION}")
        expected = self._fingerprint()
        different = [key for key in expected if state.get(key) != expected[key] and key != "world_size"]
        if different:
            shown = {key: (state.get(key), expected[key]) for key in different if key != "shards"}
            if "shards" in different:
                shown["shards"] = "the shard list or its sample counts changed"
            raise LoaderStateError(
                "cannot resume the data loader: settings differ from the saved state "
                f"(saved, now): {shown}; an exact resume needs the same data and loader settings"
            )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        settings = self._settings
        saved_plan = dataclasses.replace(
            settings.plan,
            world_size=int(state["world_size"]),
            segments=tuple(Segment(**segment) for segment in state.get("segments", ())),
            segments_epoch=epoch,
        )
        if not 0 <= batch < saved_plan.batches_in(epoch) or epoch < 0:
            raise LoaderStateError(f"data loader state position epoch {epoch} batch {batch} is out of range")
        if saved_plan.world_size != settings.plan.world_size and (batch or saved_plan.segments):
            if settings.length_bucketing:
                raise LoaderStateError(
                    f"cannot resume the data loader on {settings.plan.world_size} ranks mid-epoch: it was saved on "
                    f"{saved_plan.world_size} ranks with length bucketing, whose batch order depends on sample "
                    "lengths; resume on the original number of ranks, or from a checkpoint at an epoch boundary"
                )
            plan = saved_plan.resharded(epoch, batch, settings.plan.world_size, settings.block_size, settings.shuffle_buffer > 1)
            batch = 0
            if plan.batches_in(epoch) == 0:  # fewer samples left than one batch per new rank: next epoch
                epoch += 1
        else:
            plan = dataclasses.replace(saved_plan, world_size=settings.plan.world_size)
        self._settings = dataclasses.replace(settings, plan=plan)
        self.epoch, self.batch_in_epoch = epoch, batch
        self.close()

    def __iter__(self) -> ShardLoader:
        return self

    def _start(self) -> None:
        dataset = _BatchStream(self._settings, self.epoch, self.batch_in_epoch)
        if self._num_workers == 0:
            self._iterator = iter(dataset)
            return
        loader = DataLoader(
            dataset,
            batch_size=None,  # the streams collate themselves
            collate_fn=_as_is,
            num_workers=self._num_workers,
            prefetch_factor=4,
            # A worker stuck on a dead URL raises here instead of hanging every rank's next collective.
            timeout=WORKER_TIMEOUT_S,
            multiprocessing_context="fork",  # workers inherit the plan; no re-import per worker
        )
        self._iterator = iter(loader)

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._start()
        arrays, position, skipped = next(self._iterator)
        if isinstance(arrays, _Failure):
            self.close()
            raise ShardError(arrays.message)
        batch = {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value for key, value in arrays.items()}
        assert position == (self.epoch, self.batch_in_epoch), (
            f"loader order broke: got {position}, expected {(self.epoch, self.batch_in_epoch)}"
        )
        self.skipped.extend(skipped)
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self._settings.plan.batches_in(self.epoch):
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return batch

    def close(self) -> None:
        """Stops the workers (they are restarted lazily by the next `next()`)."""
        self._iterator = None

    def __enter__(self) -> ShardLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_loader(
    source: str | os.PathLike | Sequence[str],
    split: str = "train",
    *,
    rank: int,
    world_size: int,
    batch_size: int,
    seed: int,
    pad_token_id: int | None,
    num_workers: int = 2,
    shuffle_buffer: int = 1000,
    length_bucketing: bool = False,
    on_corrupt: OnCorrupt = "error",
    state: dict[str, Any] | None = None,
    epoch: int = 0,
    with_keys: bool = False,
) -> ShardLoader:
    """The training loader for one rank (see the module docstring).

    Args:
        source: shard directory, meta.json, or shard URLs (list, brace pattern, `::`-separated).
        rank, world_size: this process's place among the data-parallel ranks.
        batch_size: samples per batch (per rank, per micro-step).
        seed: shuffles shards (with the epoch) and samples (with epoch, rank and stream).
        pad_token_id: padding id; None takes the shards' tokenizer pad id from meta.json.
        num_workers: DataLoader worker processes (0 = in this process); part of the batch order.
        shuffle_buffer: samples per shuffle block of each stream (<= 1 disables sample shuffling).
        length_bucketing: group similar lengths in a batch (less padding).
        on_corrupt: "error" raises ShardError naming a bad shard; "skip" replaces its samples and counts it.
        state: a `state_dict()` to resume from.
        epoch: the epoch to start at when there is no state (its shard order and shuffle).
        with_keys: add `batch["keys"]` (the sample keys; a list of str) for debugging and tests.
    Returns:
        A `ShardLoader`; `next(loader)` gives {"input_ids" [B,S], "attention_mask" [B,S], "labels" [B,S]}.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    if on_corrupt not in ("error", "skip"):
        raise ValueError(f"on_corrupt must be 'error' or 'skip', got {on_corrupt!r}")
    meta, shards = open_source(source, split)
    if pad_token_id is None:
        pad_token_id = meta["tokenizer"].get("pad_token_id")
        if pad_token_id is None:
            raise ValueError(f"{meta['location']}: the tokenizer has no pad token; pass pad_token_id")
    plan = EpochPlan(tuple(shards), world_size, batch_size, max(1, num_workers), seed)
    if plan.batches_per_epoch == 0:
        raise ValueError(
            f"{meta['location']}: split {split!r} has {plan.num_samples} samples, fewer than world size {world_size} "
            f"x batch size {batch_size}: not one batch per rank"
        )
    if plan.dropped_per_epoch:
        logger.info(
            "%d of %d %s samples per epoch cannot be spread evenly over %d ranks x batch %d and are left out "
            "(a different tail each epoch)",
            plan.dropped_per_epoch, plan.num_samples, split, world_size, batch_size,
        )
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    settings = _StreamSettings(
        plan, rank, int(pad_token_id), shuffle_buffer, length_bucketing, on_corrupt, with_keys,
        vocab_size=meta["tokenizer"].get("vocab_size"),
    )
    data_loader = ShardLoader(settings, num_workers, meta, state)
    if state is None:
        data_loader.epoch = epoch
    return data_loader


# ---------------------------------------------------------------------------------------------------------
# Tokenizer check


def check_tokenizer(meta: dict[str, Any] | str | os.PathLike, tokenizer, user: str = "training") -> None:
    """Raises TokenizerMismatchError when the shards were not tokenised with `tokenizer`.

    Args:
        meta: a dict from `load_meta`, or a shard source to load it from.
        tokenizer: a Hugging Face tokenizer, or a name/path loaded with `AutoTokenizer.from_pretrained`.
        user: "training" (the tokenizer comes from the training config) or "evaluation" (from the model).
    """
    from .shards import tokenizer_info

    if not isinstance(meta, dict):
        meta = load_source_meta(meta)
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        name = str(tokenizer)
        tokenizer = AutoTokenizer.from_pretrained(name)
    else:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    shards = meta["tokenizer"]
    current = tokenizer_info(tokenizer, name)
    different = [
        key
        for key in ("vocab_size", "vocab_checksum", "pad_token_id", "eos_token_id")
        if key in shards and shards[key] != current[key]
    ]
    if different:
        ours, fix = (
            ("the model's tokenizer", "evaluate shards written with the model's tokenizer")
            if user == "evaluation"
            else ("the training config's tokenizer", "set the config's tokenizer to the one the shards used")
        )
        label = "model" if user == "evaluation" else "config"
        details = ", ".join(f"{key}: shards {shards[key]!r} vs {label} {current[key]!r}" for key in different)
        raise TokenizerMismatchError(
            f"the shards in {meta.get('location', 'meta.json')} were tokenised with {shards.get('name')!r}, which differs "
            f"from {ours} {name!r} ({details}); re-shard with `seq2vae shard --tokenizer {name}` or {fix}"
        )


def check_vocabulary_fits(meta: dict[str, Any], embedding_size: int, model: str) -> None:
    """TokenizerMismatchError unless the shards' ids (< their tokenizer's vocab_size, checked as samples
    are decoded) all index the model's embedding table of `embedding_size` rows."""
    vocab_size = int(meta["tokenizer"]["vocab_size"])
    if vocab_size > embedding_size:
        raise TokenizerMismatchError(
            f"the shards in {meta.get('location', 'meta.json')} use a vocabulary of {vocab_size} tokens "
            f"({meta['tokenizer'].get('name')!r}), more than the {embedding_size} embeddings of {model}: "
            "re-shard with the model's tokenizer"
        )
