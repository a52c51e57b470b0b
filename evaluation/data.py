"""Evaluation inputs: a shard directory split, or a .txt / .jsonl file tokenised with the model's tokenizer.

Every rank reads the same sentences in the same order (evaluation sets are small next to training
corpora), so a sentence's global index, its text and its metadata are known on every rank without
communication. A sample is {"input_ids": int32 array ending in EOS, "text": str, "meta": dict}.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..data.sources import InputStats, detect_format, read_records
from ..data.stream import check_tokenizer, check_vocabulary_fits, load_source_meta, read_split
from ..errors import UserError

logger = logging.getLogger(__name__)

TOKENIZE_CHUNK = 1000  # texts per tokenizer call


class EvalDataError(UserError, ValueError):
    """An evaluation input that cannot be read; the message names the path."""


def load_samples(
    path: str | Path,
    tokenizer=None,
    *,
    split: str = "valid",
    max_sentences: int | None = None,
    max_length: int = 512,
    text_field: str = "text",
    embedding_size: int | None = None,
) -> tuple[list[dict], dict]:
    """Reads up to `max_sentences` evaluation samples.

    Args:
        path: a shard directory (has meta.json; `split` selects its shards) or a text / JSONL file
            (optionally .gz). JSONL fields other than `text_field` become metadata (probe factors).
        tokenizer: the model's tokenizer; required, and for shard directories checked against the
            shards' tokenizer (TokenizerMismatchError, a ValueError): without it nothing tells that the
            shards' ids mean the words the model was trained on.
        embedding_size: rows of the model's token embedding; shards with a larger vocabulary are refused.
        max_length: token cap for text inputs (EOS kept as the last token); shards are already capped.
    Returns:
        (samples, info): info records the source kind, and counts of skipped / truncated lines.
    """
    path = Path(path)
    if max_sentences is not None and max_sentences < 1:
        raise EvalDataError(f"--max-sentences must be >= 1, got {max_sentences}")
    if path.is_dir():
        if not (path / "meta.json").is_file():
            raise EvalDataError(f"{path} is a directory without meta.json: not a seq2vae shard directory")
        return _load_shards(path, split, max_sentences, tokenizer, embedding_size)
    if not path.is_file():
        raise EvalDataError(f"evaluation data {path} does not exist")
    if tokenizer is None:
        raise EvalDataError(f"{path}: text / JSONL input needs the model's tokenizer, and the model has none")
    return _load_text(path, tokenizer, max_sentences, max_length, text_field)


def _load_shards(path: Path, split: str, max_sentences: int | None, tokenizer, embedding_size) -> tuple[list[dict], dict]:
    meta = load_source_meta(str(path))
    if tokenizer is None:
        raise EvalDataError(
            f"the model has no tokenizer files, so nothing shows that the shards in {path} (tokenised with "
            f"{meta['tokenizer'].get('name')!r}) match it; save the model's tokenizer into the model directory"
        )
    check_tokenizer(meta, tokenizer, user="evaluation")  # ids from another vocabulary would be scored silently
    if embedding_size is not None:
        check_vocabulary_fits(meta, embedding_size, "the model")
    samples = []
    for sample in read_split(str(path), split):
        if max_sentences is not None and len(samples) >= max_sentences:
            break
        samples.append(
            {
                "input_ids": np.asarray(sample["input_ids"], dtype=np.int32),
                "text": sample.get("text") or "",
                "meta": sample.get("meta") or {},
            }
        )
    return samples, {"kind": "shards", "split": split}


def _load_text(path: Path, tokenizer, max_sentences, max_length, text_field) -> tuple[list[dict], dict]:
    kind = detect_format(str(path))
    stats = InputStats()
    records = []
    for record in read_records(str(path), kind, text_field, None, stats, strict=False):
        if max_sentences is not None and len(records) >= max_sentences:
            break
        records.append(record)
    eos = tokenizer.eos_token_id
    samples, truncated = [], 0
    for start in range(0, len(records), TOKENIZE_CHUNK):
        chunk = records[start : start + TOKENIZE_CHUNK]
        encoded = tokenizer([r.text for r in chunk], add_special_tokens=True)["input_ids"]
        for record, ids in zip(chunk, encoded):
            if eos is not None and (not ids or ids[-1] != eos):
                ids = list(ids) + [eos]  # the target always ends with EOS, which the model predicts
            if len(ids) > max_length:
                truncated += 1
                ids = list(ids[: max_length - 1]) + ([eos] if eos is not None else [ids[max_length - 1]])
            samples.append({"input_ids": np.asarray(ids, dtype=np.int32), "text": record.text, "meta": record.metadata})
    if truncated:
        logger.warning("%s: %d sentences longer than %d tokens were truncated", path, truncated, max_length)
    info = {
        "kind": kind,
        "lines_read": stats.lines_read,
        "skipped": {k: v for k, v in vars(stats).items() if k != "lines_read" and v},
        "truncated": truncated,
    }
    return samples, info
