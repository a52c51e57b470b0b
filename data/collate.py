"""Collation: variable-length token sequences -> one padded batch in the data -> model contract.

The batch (docs/ARCHITECTURE.md) is a dict of int64 CPU tensors, right-padded to the longest sequence
in the batch: `input_ids` [B,S], `attention_mask` [B,S] (1 on tokens), `labels` [B,T] with T == S,
the same ids with -100 on padding (the clean reconstruction target, EOS included).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

IGNORE_INDEX = -100  # ignored by torch's cross-entropy: padding never counts in the loss


def collate_numpy(samples: Sequence[dict], pad_token_id: int) -> dict[str, np.ndarray]:
    """`collate` with numpy arrays: what loader workers send (pickled numpy crosses processes faster
    than torch's shared-memory tensors for batches this small)."""
    if not samples:
        raise ValueError("collate: empty list of samples")
    sequences = [np.asarray(sample["input_ids"], dtype=np.int64).reshape(-1) for sample in samples]
    lengths = np.array([len(ids) for ids in sequences])
    if lengths.min() == 0:
        raise ValueError("collate: a sample has no tokens (every sample must end with EOS)")
    positions = np.arange(lengths.max())
    attention_mask = positions[None, :] < lengths[:, None]  # [B,S]
    input_ids = np.full(attention_mask.shape, pad_token_id, dtype=np.int64)
    input_ids[attention_mask] = np.concatenate(sequences)  # row-major fill keeps each row's order
    labels = np.where(attention_mask, input_ids, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask.astype(np.int64), "labels": labels}


def collate(samples: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pads `samples` (each with "input_ids": an int array or list of ints) into one batch.

    Returns:
        {"input_ids" [B,S], "attention_mask" [B,S], "labels" [B,S]}, all int64.
    """
    return {key: torch.from_numpy(value) for key, value in collate_numpy(samples, pad_token_id).items()}


def token_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(source tokens, target tokens) of a batch still on the host: attention-mask ones, and labels
    that are not IGNORE_INDEX. Counted before the copy to the device, so reading them costs no sync."""
    return int(batch["attention_mask"].sum()), int((batch["labels"] != IGNORE_INDEX).sum())
