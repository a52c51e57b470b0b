"""The shard format and its writer (`seq2vae shard`).

A shard directory holds `train-000000.tar ...`, `valid-000000.tar ...` (webdataset tar files) and
`meta.json`. Each sample is `<key>.input_ids.npy` (int32, never pickle), `<key>.text.txt` (UTF-8) and,
when the input had extra fields, `<key>.meta.json`. Keys are `<split>_<index>` and unique.

`meta.json` (written last, atomically, so its presence means every shard is complete):
    format, version
    tokenizer: name, class, vocab_size (len(tokenizer), added tokens included), vocab_checksum,
               pad/eos/bos/unk/mask token ids
    max_length, shard_size, seed, valid_fraction, inputs, valid_inputs, text_field
    splits: {split: {num_samples, shards: [{name, num_samples}]}}
    counts: lines_read, written, empty, undecodable, invalid_json, missing_field, truncated
    settings, settings_checksum: the settings that determine the shards' content, and their sha256
Shards are first written as `*.tar.tmp` and renamed when complete, so an interrupted run never
leaves a shard that looks complete. The tokenisation workers also build the tar members (plain ustar
headers, byte for byte what Python's tarfile writes; webdataset reads them), so the writing process
only reads lines and appends bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from .sources import InputError, InputFormat, InputStats, Record, detect_format, read_records

logger = logging.getLogger(__name__)

META_FILENAME = "meta.json"
META_FORMAT = "seq2vae-shards"
META_VERSION = 1
SPLITS = ("train", "valid", "test")
TOKENIZE_CHUNK = 512  # records per tokenisation task: large enough to amortise inter-process transfer
REQUIRED_META_KEYS = ("format", "version", "tokenizer", "max_length", "splits", "counts", "settings_checksum")


class MetaError(UserError, ValueError):
    """A missing, unreadable or inconsistent meta.json; names the file."""


# ---------------------------------------------------------------------------------------------------------
# Sample encoding


_npy_encode_headers: dict[tuple[int, ...], bytes] = {}  # shape -> np.save's header bytes for int32


def encode_ids(input_ids: np.ndarray) -> bytes:
    """`input_ids` as int32 `.npy` bytes, byte for byte what np.save writes.

    np.save builds its header (a formatted dict) for every call, ~15 us per sample; the header only
    depends on the shape, so it is made by np.save once per shape and the data appended.
    """
    ids = np.ascontiguousarray(input_ids, dtype=np.int32)
    header = _npy_encode_headers.get(ids.shape)
    if header is None:
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(ids.shape, dtype=np.int32), allow_pickle=False)
        header = buffer.getvalue()[: buffer.tell() - ids.nbytes]
        if len(_npy_encode_headers) < 100_000:
            _npy_encode_headers[ids.shape] = header
    return header + ids.tobytes()


_NPY_MAGIC = b"\x93NUMPY"
_npy_headers: dict[bytes, tuple[np.dtype, int, int]] = {}  # header bytes -> (dtype, count, data offset)


def decode_ids(data: bytes) -> np.ndarray:
    """Decodes a 1-D int32 `.npy` payload without ever unpickling; raises ValueError on anything else.

    Headers are parsed once per distinct length and cached: np.load costs ~30 us per sample, this ~1 us.
    """
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise ValueError("input_ids.npy is not a .npy file")
    header_length = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(data[8:12], "little")
    offset = (10 if data[6] == 1 else 12) + header_length
    header = bytes(data[:offset])
    parsed = _npy_headers.get(header)
    if parsed is None:
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(stream)
        if dtype.hasobject or dtype.kind not in "iu" or len(shape) != 1:
            raise ValueError(f"input_ids.npy must be a 1-D integer array, got dtype {dtype} shape {shape}")
        parsed = (dtype, shape[0], offset)
        if len(_npy_headers) < 100_000:
            _npy_headers[header] = parsed
    dtype, count, offset = parsed
    if len(data) != offset + count * dtype.itemsize:
        raise ValueError(f"input_ids.npy is truncated ({len(data) - offset} data bytes for {count} ids)")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).astype(np.int32, copy=False)


def encode_sample(key: str, input_ids: np.ndarray, text: str, metadata: dict[str, Any]) -> dict[str, Any]:
    sample = {"__key__": key, "input_ids.npy": encode_ids(input_ids), "text.txt": text.encode("utf-8")}
    if metadata:
        sample["meta.json"] = json.dumps(metadata, ensure_ascii=False).encode("utf-8")
    return sample


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """{"__key__", "input_ids.npy", "text.txt", ["meta.json"]} bytes -> {key, input_ids, text, meta}."""
    if "input_ids.npy" not in raw:
        raise ValueError(f"sample {raw.get('__key__')!r} has no input_ids.npy (fields: {sorted(raw)})")
    return {
        "key": raw["__key__"],
        "input_ids": decode_ids(raw["input_ids.npy"]),
        "text": raw.get("text.txt", b"").decode("utf-8"),
        "meta": json.loads(raw["meta.json"]) if "meta.json" in raw else {},
    }


# ---------------------------------------------------------------------------------------------------------
# meta.json


def meta_location(source: str) -> str:
    """Where the meta.json of a shard source lives: inside a directory, or beside the first shard URL.

    `pipe:` URLs (e.g. `pipe:curl -s https://host/d/train-000000.tar`) get the last `*.tar` path in the
    command replaced, so the same command fetches meta.json.
    """
    if source.endswith(META_FILENAME):
        return source
    if "://" not in source and not source.startswith("pipe:") and Path(source).is_dir():
        return str(Path(source) / META_FILENAME)
    matches = list(re.finditer(r"[^/\s'\"]+\.tar(?=$|[\s'\"])", source))
    if not matches:
        raise MetaError(f"cannot tell where meta.json is for shard source {source!r}: expected a directory or *.tar URLs")
    last = matches[-1]
    return source[: last.start()] + META_FILENAME + source[last.end() :]


def load_meta(source: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates the meta.json of a shard directory (or of the directory/URL beside a shard).

    Raises:
        MetaError naming the file when it is missing, not JSON, or lacks required keys.
    """
    location = meta_location(str(source))
    try:
        if "://" in location or location.startswith("pipe:"):
            from webdataset.gopen import gopen

            with gopen(location, "rb") as handle:
                text = handle.read().decode("utf-8")
        else:
            text = Path(location).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetaError(
            f"{location} not found: shard directories are written by `seq2vae shard`, which writes meta.json "
            "last; without it the shards are incomplete or were not written by seq2vae"
        ) from None
    except Exception as error:  # OSError, UnicodeDecodeError, and the plain Exceptions gopen raises for pipes/URLs
        raise MetaError(f"cannot read {location}: {error}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as error:
        raise MetaError(f"{location}: not valid JSON ({error})") from None
    missing = [key for key in REQUIRED_META_KEYS if key not in meta] if isinstance(meta, dict) else ["(all)"]
    if missing:
        raise MetaError(f"{location}: missing keys {missing}; was it written by `seq2vae shard`?")
    if meta["format"] != META_FORMAT or meta["version"] != META_VERSION:
        raise MetaError(
            f"{location}: format {meta['format']!r} version {meta['version']!r}; this seq2vae reads "
            f"{META_FORMAT!r} version {META_VERSION}"
        )
    meta["location"] = location
    return meta


def split_shards(meta: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The shard entries `[{name, num_samples}]` of `split`; MetaError if the split has none."""
    shards = meta["splits"].get(split, {}).get("shards", [])
    if not shards:
        available = [name for name, entry in meta["splits"].items() if entry.get("shards")]
        raise MetaError(f"{meta.get('location', META_FILENAME)}: no {split!r} shards (splits with shards: {available})")
    return shards


def _vocab_checksum(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()


def tokenizer_info(tokenizer, name: str) -> dict[str, Any]:
    """What meta.json records about the tokenizer, and what `check_tokenizer` compares."""
    return {
        "name": name,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "vocab_checksum": _vocab_checksum(tokenizer),
        **{f"{kind}_token_id": getattr(tokenizer, f"{kind}_token_id", None) for kind in ("pad", "eos", "bos", "unk", "mask")},
    }


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------------------
# Writing


TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tar archives end with two zero blocks, padded to a whole record


def _ustar_template() -> bytes:
    info = tarfile.TarInfo("")
    info.mtime, info.mode, info.uname, info.gname = 0, 0o444, "seq2vae", "seq2vae"  # fixed: reproducible shards
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    return bytes(header)


_USTAR_TEMPLATE = _ustar_template()
# The header checksum is the byte sum of the header; only the name and size fields differ from the
# template, so the sum of the rest is taken once (summing 512 bytes per member was half the header cost).
_USTAR_FIXED_SUM = sum(_USTAR_TEMPLATE) - sum(_USTAR_TEMPLATE[:100]) - sum(_USTAR_TEMPLATE[124:136])


def _ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header tarfile would write for a regular file `name` of `size` bytes.

    Built from a template: tarfile's own header code costs ~50 us per member and dominated sharding."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    size_field = b"%011o\0" % size
    header = bytearray(_USTAR_TEMPLATE)
    header[: len(encoded)] = encoded
    header[124:136] = size_field
    header[148:155] = b"%06o\0" % (_USTAR_FIXED_SUM + sum(encoded) + sum(size_field))
    return bytes(header)


def tar_members(sample: dict[str, Any]) -> bytes:
    """The tar members (ustar headers + padded data) of one encoded sample, byte for byte what tarfile
    writes. Building them here lets the tokenisation workers do it in parallel; the writing process
    only appends bytes."""
    key, parts = sample["__key__"], []
    for suffix in sorted(name for name in sample if name != "__key__"):
        data = sample[suffix]
        parts += [_ustar_header(f"{key}.{suffix}", len(data)), data, bytes(-len(data) % TAR_BLOCK)]
    return b"".join(parts)


class ShardSink:
    """Writes one split's samples into `<split>-NNNNNN.tar` files of `shard_size` samples each."""

    def __init__(self, output_dir: Path, split: str, shard_size: int):
        self.output_dir, self.split, self.shard_size = output_dir, split, shard_size
        self.shards: list[dict[str, Any]] = []
        self.num_samples = 0  # assigned keys; the next sample's index
        self._file = None
        self._count = 0
        self._size = 0

    def next_key(self) -> str:
        key = f"{self.split}_{self.num_samples:010d}"
        self.num_samples += 1
        return key

    def _temporary(self) -> Path:
        return self.output_dir / f"{self.split}-{len(self.shards):06d}.tar.tmp"

    def write(self, members: bytes) -> None:
        """Appends one sample's tar members (from `tar_members`)."""
        if self._file is None:
            self._file = open(self._temporary(), "wb")
            self._count = self._size = 0
        self._file.write(members)
        self._count += 1
        self._size += len(members)
        if self._count == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        end = 2 * TAR_BLOCK
        end += -(self._size + end) % TAR_RECORD
        self._file.write(bytes(end))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        temporary = self._temporary()
        os.replace(temporary, temporary.with_suffix(""))  # the rename marks the shard complete
        self.shards.append({"name": temporary.with_suffix("").name, "num_samples": self._count})
        self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._finish()

    def abort(self) -> None:
        """Removes the half-written shard (the completed ones stay; without meta.json they are not used)."""
        if self._file is not None:
            self._file.close()
            self._temporary().unlink(missing_ok=True)
            self._file = None


@dataclasses.dataclass
class _Encoded:
    members: list[bytes]  # one sample's tar members each
    truncated: int


_worker_tokenizer = None


def _init_worker(tokenizer_name: str) -> None:
    global _worker_tokenizer
    from transformers import AutoTokenizer

    _worker_tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[np.ndarray], int]:
    """Tokenises with the tokenizer's own special tokens (BOS for BART), ensures EOS is last and
    truncates to `max_length` keeping EOS. Returns (int32 id arrays, number truncated)."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    result, truncated = [], 0
    for ids in encoded:
        if not ids or ids[-1] != eos:
            ids = list(ids) + [eos]
        if len(ids) > max_length:
            ids = list(ids[: max_length - 1]) + [eos]
            truncated += 1
        result.append(np.asarray(ids, dtype=np.int32))
    return result, truncated


def encode_chunk(tokenizer, chunk: Sequence[tuple[str, str, dict[str, Any]]], max_length: int) -> _Encoded:
    """(key, text, metadata) records -> their tar members."""
    ids, truncated = tokenize_texts(tokenizer, [text for _, text, _ in chunk], max_length)
    members = [tar_members(encode_sample(key, i, text, meta)) for (key, text, meta), i in zip(chunk, ids)]
    return _Encoded(members, truncated)


def _encode_in_worker(chunk: list[tuple[str, str, dict[str, Any]]], max_length: int) -> _Encoded:
    return encode_chunk(_worker_tokenizer, chunk, max_length)


def _settings_checksum(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()


def _existing_shard_files(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(
        path for path in output_dir.iterdir()
        if path.name == META_FILENAME or path.name.endswith((".tar", ".tar.tmp", ".json.tmp"))
    )


def write_shards(
    inputs: Sequence[str],
    output_dir: str | os.PathLike,
    tokenizer_name: str,
    *,
    valid_inputs: Sequence[str] = (),
    valid_fraction: float = 0.0,
    test_inputs: Sequence[str] = (),
    seed: int = 0,
    max_length: int = 256,
    shard_size: int = 10_000,
    text_field: str = "text",
    input_format: InputFormat = "auto",
    hf_split: str | None = None,
    workers: int = 1,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenises `inputs` into train (and valid) shards in `output_dir` and writes meta.json last.

    Args:
        inputs: text / JSONL files (optionally .gz), local HF dataset directories or hub dataset names.
        valid_inputs: inputs written entirely to the valid split (exclusive with valid_fraction).
        valid_fraction: fraction of `inputs` records sent to valid, drawn with `seed`.
        test_inputs: inputs written entirely to the test split (kept apart: never drawn into train or valid).
        max_length: longest token sequence kept (EOS included); longer ones are truncated and counted.
        hf_split: the split of HF inputs.
        workers: tokenisation processes (1 = in this process).
        strict: raise InputError on the first bad line instead of skipping and counting it.
    Returns:
        The meta.json contents.
    """
    if not inputs:
        raise InputError("no inputs given")
    if valid_inputs and valid_fraction > 0:
        raise InputError("give either valid inputs or a valid fraction, not both")
    if not 0.0 <= valid_fraction < 1.0:
        raise InputError(f"valid fraction must be in [0, 1), got {valid_fraction}")
    if max_length < 2 or shard_size < 1 or workers < 1:
        raise InputError(f"need max_length >= 2, shard_size >= 1, workers >= 1 (got {max_length}, {shard_size}, {workers})")
    for path in [*inputs, *valid_inputs, *test_inputs]:  # fail before anything is written
        if (detect_format(path) if input_format == "auto" else input_format) != "hf" and not Path(path).is_file():
            raise InputError(f"input {path} does not exist")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output {output_dir} is an existing file, not a directory")
    stale = _existing_shard_files(output_dir)
    if stale and not overwrite:
        raise InputError(
            f"{output_dir} already holds shards ({stale[0].name} ...); choose an empty directory or pass --overwrite"
        )
    tokenizer = _load_tokenizer(tokenizer_name)
    if tokenizer.eos_token_id is None:
        raise InputError(f"tokenizer {tokenizer_name!r} has no EOS token; seq2vae targets must end with EOS")
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _write(inputs, output_dir, tokenizer, tokenizer_name, stale, valid_inputs, valid_fraction, test_inputs,
                      seed, max_length, shard_size, text_field, input_format, hf_split, workers, strict, progress)
    except BaseException:
        if created and not any(output_dir.iterdir()):
            output_dir.rmdir()  # a failed run leaves no empty directory that looks like a destination in use
        raise


def _load_tokenizer(name: str):
    """AutoTokenizer `name`, or InputError naming it (a missing path fails at once, without hub retries)."""
    from transformers import AutoTokenizer

    path = Path(name)
    if (path.is_absolute() or name.startswith((".", "~"))) and not path.exists():
        raise InputError(f"--tokenizer {name} does not exist")
    if path.is_dir() and not any(path.glob("tokenizer*")):
        raise InputError(f"--tokenizer {name} is a directory without tokenizer files (tokenizer.json / tokenizer_config.json)")
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--tokenizer {name}: cannot load a tokenizer: {first_line}") from None


def _write(inputs, output_dir, tokenizer, tokenizer_name, stale, valid_inputs, valid_fraction, test_inputs, seed,
           max_length, shard_size, text_field, input_format, hf_split, workers, strict, progress) -> dict[str, Any]:
    """write_shards after its checks: the shards, then meta.json."""
    for path in stale:
        path.unlink()

    stats = InputStats()
    split_rng = random.Random(seed)

    def records() -> Iterator[tuple[str, Record]]:
        for path in inputs:
            for record in read_records(path, input_format, text_field, hf_split, stats, strict):
                yield ("valid" if valid_fraction and split_rng.random() < valid_fraction else "train"), record
        for path in valid_inputs:
            for record in read_records(path, input_format, text_field, hf_split, stats, strict):
                yield "valid", record
        for path in test_inputs:
            for record in read_records(path, input_format, text_field, hf_split, stats, strict):
                yield "test", record

    sinks = {split: ShardSink(output_dir, split, shard_size) for split in SPLITS}

    def keyed_chunks() -> Iterator[tuple[list[str], list[tuple[str, str, dict[str, Any]]]]]:
        """(splits, [(key, text, metadata)]) chunks; keys are assigned here so that any number of
        workers writes the same shards."""
        records_iter = records()
        while chunk := list(itertools.islice(records_iter, TOKENIZE_CHUNK)):
            yield [split for split, _ in chunk], [(sinks[split].next_key(), r.text, r.metadata) for split, r in chunk]

    truncated = 0
    bar = tqdm(desc=f"sharding into {output_dir}", unit=" samples", disable=not progress)
    try:
        for splits, encoded in _encode_chunks(keyed_chunks(), tokenizer, tokenizer_name, max_length, workers):
            truncated += encoded.truncated
            for split, members in zip(splits, encoded.members):
                sinks[split].write(members)
            bar.update(len(splits))
        for sink in sinks.values():
            sink.close()
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    finally:
        bar.close()

    if sinks["train"].num_samples == 0:
        raise InputError(f"no usable training samples in {list(inputs)} ({dataclasses.asdict(stats)})")
    settings = {
        "inputs": [str(p) for p in inputs],
        "valid_inputs": [str(p) for p in valid_inputs],
        **({"test_inputs": [str(p) for p in test_inputs]} if test_inputs else {}),  # older settings checksums stay valid
        "valid_fraction": valid_fraction,
        "seed": seed,
        "max_length": max_length,
        "shard_size": shard_size,
        "text_field": text_field,
        "input_format": input_format,
        "hf_split": hf_split,
        "tokenizer": tokenizer_name,
        "vocab_checksum": _vocab_checksum(tokenizer),
    }
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "tokenizer": tokenizer_info(tokenizer, tokenizer_name),
        **{
            key: settings[key]
            for key in ("max_length", "shard_size", "seed", "valid_fraction", "inputs", "valid_inputs", "text_field")
        },
        "splits": {split: {"num_samples": sink.num_samples, "shards": sink.shards} for split, sink in sinks.items()},
        "counts": {
            **dataclasses.asdict(stats),
            "written": sum(sink.num_samples for sink in sinks.values()),
            "truncated": truncated,
        },
        "settings": settings,
        "settings_checksum": _settings_checksum(settings),
    }
    _write_json_atomic(output_dir / META_FILENAME, meta)
    counts = meta["counts"]
    logger.info(
        "wrote %d train + %d valid + %d test samples in %d shards to %s; %s",
        sinks["train"].num_samples,
        sinks["valid"].num_samples,
        sinks["test"].num_samples,
        sum(len(sink.shards) for sink in sinks.values()),
        output_dir,
        ", ".join(f"{name} {value}" for name, value in counts.items()),
    )
    return meta


def _encode_chunks(chunks, tokenizer, tokenizer_name: str, max_length: int, workers: int):
    """Yields (splits, encoded) in input order; with workers > 1 a bounded window of chunks is in flight."""
    if workers == 1:
        for splits, chunk in chunks:
            yield splits, encode_chunk(tokenizer, chunk, max_length)
        return
    # Each process tokenises serially; Rust-level threads inside forked children can deadlock.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer_name,)) as pool:
        pending: collections.deque = collections.deque()
        for splits, chunk in chunks:
            pending.append((splits, pool.apply_async(_encode_in_worker, (chunk, max_length))))
            # A bounded window keeps memory flat however large the corpus (Pool.imap would read it all).
            if len(pending) >= 4 * workers:
                done_splits, result = pending.popleft()
                yield done_splits, result.get()
        while pending:
            done_splits, result = pending.popleft()
            yield done_splits, result.get()
