from __future__ import annotations

import numpy as np
import pytest
import torch

from seq2vae.data.collate import IGNORE_INDEX, collate


def test_pads_to_the_longest_and_masks_labels():
    samples = [{"input_ids": np.array([5, 6, 1], dtype=np.int32)}, {"input_ids": [7, 1]}, {"input_ids": [8, 9, 10, 11, 1]}]
    batch = collate(samples, pad_token_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(value.dtype == torch.int64 and value.shape == (3, 5) for value in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 1, 0, 0], [7, 1, 0, 0, 0], [8, 9, 10, 11, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[5, 6, 1, -100, -100], [7, 1, -100, -100, -100], [8, 9, 10, 11, 1]]
    assert IGNORE_INDEX == -100


def test_pad_id_is_respected_and_padding_never_leaks_into_labels():
    batch = collate([{"input_ids": [3, 3, 3, 2]}, {"input_ids": [3, 2]}], pad_token_id=3)
    assert batch["input_ids"].tolist() == [[3, 3, 3, 2], [3, 2, 3, 3]]
    # Real tokens equal to the pad id stay in the labels; only padding positions become -100.
    assert batch["labels"].tolist() == [[3, 3, 3, 2], [3, 2, -100, -100]]


def test_empty_inputs_are_errors():
    with pytest.raises(ValueError, match="empty"):
        collate([], pad_token_id=0)
    with pytest.raises(ValueError, match="no tokens"):
        collate([{"input_ids": []}], pad_token_id=0)
