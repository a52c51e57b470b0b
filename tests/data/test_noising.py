from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from seq2vae.data.collate import collate
from seq2vae.data.noising import apply_noise, mask_token_id_for, protected_token_ids

PAD, EOS, MASK = 0, 1, 3


def random_batch(rows: int = 256, max_len: int = 60, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(rows):
        length = int(torch.randint(5, max_len, (1,), generator=generator))
        ids = torch.randint(10, 500, (length,), generator=generator).tolist() + [EOS]
        samples.append({"input_ids": ids})
    return collate(samples, pad_token_id=PAD)


def rows(batch) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def is_subsequence(short: list[int], long: list[int]) -> bool:
    remaining = iter(long)
    return all(token in remaining for token in short)


def test_deletion_rate_order_eos_and_padding():
    batch = random_batch()
    noised = apply_noise(batch, 0.3, 0.0, MASK, PAD, torch.Generator().manual_seed(1))
    eligible = int(batch["attention_mask"].sum()) - batch["input_ids"].shape[0]  # all but EOS
    deleted = int(batch["attention_mask"].sum() - noised["attention_mask"].sum())
    assert abs(deleted / eligible - 0.3) < 0.02
    for before, after in zip(rows(batch), rows(noised)):
        assert after[-1] == EOS and after.count(EOS) == 1
        assert is_subsequence(after, before)
    # Right padding with the pad id, width shrunk to the longest remaining row.
    mask = noised["attention_mask"].bool()
    assert (noised["input_ids"][~mask] == PAD).all()
    assert noised["input_ids"].shape[1] == int(noised["attention_mask"].sum(1).max())
    assert torch.equal(mask.int().sort(dim=1, descending=True, stable=True).values, mask.int())


def test_masking_rate_replaces_without_swapping():
    batch = random_batch()
    noised = apply_noise(batch, 0.0, 0.25, MASK, PAD, torch.Generator().manual_seed(2))
    assert torch.equal(noised["attention_mask"], batch["attention_mask"])
    changed = noised["input_ids"] != batch["input_ids"]
    assert (noised["input_ids"][changed] == MASK).all()
    eligible = int(batch["attention_mask"].sum()) - batch["input_ids"].shape[0]
    assert abs(int(changed.sum()) / eligible - 0.25) < 0.02
    lengths = batch["attention_mask"].sum(1)
    last = noised["input_ids"].gather(1, (lengths - 1)[:, None])
    assert (last == EOS).all()
    # Every unmasked token keeps its own id in its own place (the reference code swapped ids with the mask).
    assert torch.equal(noised["input_ids"][~changed], batch["input_ids"][~changed])


def test_labels_stay_clean_and_input_is_not_modified():
    batch = random_batch(rows=32)
    original = {key: value.clone() for key, value in batch.items()}
    noised = apply_noise(batch, 0.2, 0.2, MASK, PAD, torch.Generator().manual_seed(3))
    assert torch.equal(noised["labels"], original["labels"])
    for key in original:
        assert torch.equal(batch[key], original[key])
    assert not torch.equal(noised["input_ids"][:, :5], original["input_ids"][:, :5])


def test_combined_rates_are_exclusive_and_reproducible():
    batch = random_batch()
    first = apply_noise(batch, 0.2, 0.3, MASK, PAD, torch.Generator().manual_seed(4))
    second = apply_noise(batch, 0.2, 0.3, MASK, PAD, torch.Generator().manual_seed(4))
    assert torch.equal(first["input_ids"], second["input_ids"])
    eligible = int(batch["attention_mask"].sum()) - batch["input_ids"].shape[0]
    masked = int((first["input_ids"] == MASK).sum())
    deleted = int(batch["attention_mask"].sum() - first["attention_mask"].sum())
    assert abs(masked / eligible - 0.3) < 0.02 and abs(deleted / eligible - 0.2) < 0.02


def test_keep_ids_and_extreme_rates():
    batch = collate([{"input_ids": [42, 7, 8, 9, EOS]}, {"input_ids": [42, 7, EOS]}], pad_token_id=PAD)
    everything = apply_noise(batch, 1.0, 0.0, MASK, PAD, torch.Generator().manual_seed(0), keep_ids=[42])
    assert rows(everything) == [[42, EOS], [42, EOS]]
    assert apply_noise(batch, 0.0, 0.0, MASK, PAD)["input_ids"] is batch["input_ids"]
    with pytest.raises(ValueError, match="deletion"):
        apply_noise(batch, 0.7, 0.5, MASK, PAD)


def test_mask_token_id_for_real_tokenizers(tokenizer_dir):
    with_mask = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert mask_token_id_for(with_mask) == with_mask.mask_token_id == 3
    without_mask = AutoTokenizer.from_pretrained(tokenizer_dir)
    without_mask.mask_token = None
    assert mask_token_id_for(without_mask) == without_mask.unk_token_id
    without_mask.add_special_tokens({"additional_special_tokens": ["<extra_id_0>"]})
    assert mask_token_id_for(without_mask) == without_mask.convert_tokens_to_ids("<extra_id_0>")


def test_a_tokenizer_bos_survives_noising_as_bart_needs(tokenizer_dir):
    from tokenizers.processors import TemplateProcessing

    t5_style = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert protected_token_ids(t5_style) == ()
    bart_style = AutoTokenizer.from_pretrained(tokenizer_dir)  # BART opens every input with <s>
    bart_style.add_special_tokens({"bos_token": "<s>"})
    bos, eos = bart_style.bos_token_id, bart_style.eos_token_id
    bart_style.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    encoded = bart_style(["the old man walks to the market every day ."] * 400)["input_ids"]
    batch = collate([{"input_ids": ids} for ids in encoded], pad_token_id=PAD)
    assert protected_token_ids(bart_style) == (bos,)
    generator = torch.Generator().manual_seed(0)
    protected = apply_noise(batch, 0.15, 0.15, MASK, PAD, generator, keep_ids=protected_token_ids(bart_style))
    assert (protected["input_ids"][:, 0] == bos).all()
    unprotected = apply_noise(batch, 0.15, 0.15, MASK, PAD, torch.Generator().manual_seed(0))
    assert (unprotected["input_ids"][:, 0] == bos).float().mean() < 0.8  # what the trainer did before
