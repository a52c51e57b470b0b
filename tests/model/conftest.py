from __future__ import annotations

import pytest
import torch

from seq2vae.model import Seq2SeqVAE


@pytest.fixture(params=["t5", "bart"])
def tiny_vae(request, tiny_t5_dir, tiny_bart_dir) -> Seq2SeqVAE:
    """Both backbone families, loaded fresh from the session's saved tiny models, in eval mode."""
    directory = {"t5": tiny_t5_dir, "bart": tiny_bart_dir}[request.param]
    return Seq2SeqVAE.from_pretrained(directory).eval()


SENTENCES = ["the old man reads a book", "she will write letters tomorrow", "a dog ran"]


@pytest.fixture
def sentences() -> list[str]:
    return list(SENTENCES)


@pytest.fixture
def make_batch():
    return _make_batch


def _make_batch(tokenizer, texts=SENTENCES, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """A batch in the data contract's format, optionally padded to a fixed length."""
    padding = "max_length" if pad_to else True
    encoded = tokenizer(texts, padding=padding, max_length=pad_to, return_tensors="pt")
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
