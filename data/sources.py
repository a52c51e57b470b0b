"""Corpus readers for `seq2vae shard`: plain text, labelled text, JSONL (all optionally gzipped) and HF `datasets`.

`labeled` is the format Optimus distributes Yelp in (`label<TAB>text` per line; Optimus'
big_ae/utils.py:420-423 splits on the first tab): the label becomes the `label` metadata field,
never part of the text.

Each reader streams `Record`s (text, metadata, location) and never holds the corpus in memory. Bad
input (non-UTF-8 bytes, empty lines, a JSONL line that is not a JSON object or lacks the text field)
is skipped, counted in `InputStats` and logged with its file and line number, or raises `InputError`
when `strict` is set.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ..errors import UserError

logger = logging.getLogger(__name__)

InputFormat = Literal["auto", "text", "labeled", "jsonl", "hf"]
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
FILE_SUFFIXES = JSONL_SUFFIXES + (".txt", ".text", ".csv", ".tsv")
MAX_LOGGED_SKIPS = 50  # per reason; the counts in meta.json stay exact beyond that


class InputError(UserError, ValueError):
    """Bad input under --strict, or an input that cannot be read at all; names the file and line."""


@dataclasses.dataclass
class Record:
    text: str
    metadata: dict[str, Any]
    location: str  # "file:line" or "dataset[split]#index", for messages


@dataclasses.dataclass
class InputStats:
    """Line accounting written to meta.json: every line read is written or counted under a reason."""

    lines_read: int = 0
    empty: int = 0
    undecodable: int = 0
    invalid_json: int = 0
    missing_field: int = 0  # JSONL / dataset rows without the text field; labeled lines without a tab

    def skip(self, reason: str, location: str, detail: str, strict: bool) -> None:
        if strict:
            raise InputError(f"{location}: {detail} (remove --strict to skip and count such lines)")
        count = getattr(self, reason) + 1
        setattr(self, reason, count)
        if count <= MAX_LOGGED_SKIPS:
            logger.warning("skipped %s: %s", location, detail)
        if count == MAX_LOGGED_SKIPS:
            logger.warning("further '%s' skips are counted but not logged", reason)


# A hub dataset name: "owner/name" (no leading "/", ".", "~"); anything else that does not exist is a missing file.
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def split_suffix(path: str) -> tuple[str, str | None]:
    """`NAME:SPLIT` -> (NAME, SPLIT) for a hub dataset or a saved dataset directory, so one command can
    send a dataset's train / validation / test splits to our train / valid / test shards; anything
    else (a file, a name without a suffix) -> (path, None)."""
    name, colon, split = path.rpartition(":")
    if colon and split and re.fullmatch(r"[\w.-]+", split) and (Path(name).is_dir() or HUB_NAME.fullmatch(name)):
        return name, split
    return path, None


def detect_format(path: str) -> str:
    """text / jsonl by extension (after an optional .gz), hf for a saved dataset directory or a hub name
    (either with an optional `:SPLIT` suffix)."""
    if split_suffix(path)[1] is not None:
        return "hf"
    candidate = Path(path)
    if candidate.is_dir():
        if not any((candidate / name).is_file() for name in SAVED_DATASET_FILES):
            raise InputError(
                f"input {path} is a directory but not a saved Hugging Face dataset (none of "
                f"{', '.join(SAVED_DATASET_FILES)}); pass its text / JSONL files instead"
            )
        return "hf"
    name = candidate.name.lower().removesuffix(".gz")
    if not candidate.exists():
        if name.endswith(FILE_SUFFIXES) or path.endswith(".gz") or not HUB_NAME.fullmatch(path):
            raise InputError(f"input {path} does not exist (neither a file, a directory nor a hub dataset name owner/name)")
        return "hf"  # a hub dataset name such as "user/corpus"
    return "jsonl" if name.endswith(JSONL_SUFFIXES) else "text"


def _open_binary(path: Path):
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as error:
        raise InputError(f"cannot open input {path}: {error}") from None


def _decoded_lines(path: Path, stats: InputStats, strict: bool) -> Iterator[tuple[str, str]]:
    """(line without its newline, "file:line") for every decodable line."""
    with _open_binary(path) as handle:
        try:
            for number, raw in enumerate(handle, start=1):
                stats.lines_read += 1
                location = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as error:
                    stats.skip("undecodable", location, f"not valid UTF-8 ({error.reason} at byte {error.start})", strict)
                    continue
                yield line, location
        except (OSError, EOFError) as error:  # e.g. a truncated .gz file
            raise InputError(f"{path}: cannot read past line {stats.lines_read}: {error}") from None


def read_text(path: Path, stats: InputStats, strict: bool) -> Iterator[Record]:
    for line, location in _decoded_lines(path, stats, strict):
        if not line.strip():
            stats.skip("empty", location, "empty line", strict)
            continue
        yield Record(line, {}, location)


def read_labeled(path: Path, stats: InputStats, strict: bool) -> Iterator[Record]:
    """`label<TAB>text` lines (Optimus' Yelp files): the text, with {"label": label} as metadata."""
    for line, location in _decoded_lines(path, stats, strict):
        if not line.strip():
            stats.skip("empty", location, "empty line", strict)
            continue
        label, tab, text = line.partition("\t")
        if not tab:
            stats.skip("missing_field", location, "no tab: a labeled line is label<TAB>text", strict)
            continue
        if not text.strip():
            stats.skip("empty", location, f"empty text after the label {label!r}", strict)
            continue
        yield Record(text.strip(), {"label": label.strip()}, location)


def read_jsonl(path: Path, text_field: str, stats: InputStats, strict: bool) -> Iterator[Record]:
    for line, location in _decoded_lines(path, stats, strict):
        if not line.strip():
            stats.skip("empty", location, "empty line", strict)
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as error:
            stats.skip("invalid_json", location, f"not JSON ({error.msg})", strict)
            continue
        if not isinstance(example, dict):
            stats.skip("invalid_json", location, f"not a JSON object but {type(example).__name__}", strict)
            continue
        record = _record_from(example, text_field, location, stats, strict)
        if record is not None:
            yield record


def _record_from(example: dict[str, Any], text_field: str, location: str, stats: InputStats, strict: bool) -> Record | None:
    """The example's text and its other fields as metadata, or None (counted) when the text is missing or empty."""
    text = example.pop(text_field, None)
    if not isinstance(text, str):
        if text is not None:  # the field is there, so the other fields are no help
            detail = f"field {text_field!r} holds a {type(text).__name__}, not a string"
        elif example:
            detail = (f"lacks field {text_field!r}; its fields: {', '.join(map(repr, sorted(example)))} "
                      "(choose one with --text-field)")
        else:
            detail = f"lacks field {text_field!r}: the object is empty"
        stats.skip("missing_field", location, detail, strict)
        return None
    if not text.strip():
        stats.skip("empty", location, f"empty field {text_field!r}", strict)
        return None
    return Record(text, _jsonable(example), location)


def _load_hf(name: str, split: str | None):
    import datasets  # imported lazily: only this input kind needs it

    if Path(name).is_dir():
        dataset = datasets.load_from_disk(name)
        if isinstance(dataset, datasets.DatasetDict):
            if split is None:
                raise InputError(f"{name}: a dataset with splits {sorted(dataset)}; choose one with --split")
            if split not in dataset:
                raise InputError(f"{name}: no split {split!r}; available: {sorted(dataset)}")
            dataset = dataset[split]
        # Streams from the Arrow files on disk instead of materialising Python rows.
        return dataset.to_iterable_dataset()
    return datasets.load_dataset(name, split=split or "train", streaming=True)


def read_hf(name: str, split: str | None, text_field: str, stats: InputStats, strict: bool) -> Iterator[Record]:
    dataset = _load_hf(name, split)
    for index, example in enumerate(dataset):
        stats.lines_read += 1
        location = f"{name}[{split or 'train'}]#{index}"
        record = _record_from(dict(example), text_field, location, stats, strict)
        if record is not None:
            yield record


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    """Keeps the metadata fields that JSON can hold (drops e.g. images or binary columns)."""
    kept = {}
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[key] = value
    return kept


def read_records(
    path: str,
    input_format: InputFormat,
    text_field: str,
    split: str | None,
    stats: InputStats,
    strict: bool,
) -> Iterator[Record]:
    """Streams the records of one input, updating `stats` as it goes."""
    kind = detect_format(path) if input_format == "auto" else input_format
    if kind == "hf":
        name, own_split = split_suffix(path)
        return read_hf(name, own_split or split, text_field, stats, strict)
    if not Path(path).is_file():
        raise InputError(f"input {path} does not exist")
    if kind == "jsonl":
        return read_jsonl(Path(path), text_field, stats, strict)
    if kind == "labeled":
        return read_labeled(Path(path), stats, strict)
    return read_text(Path(path), stats, strict)
