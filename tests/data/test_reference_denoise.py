"""reference_denoise (model.reference_compat.denoise) against the reference's own run_batch.

reference_denoise_golden.json holds what transformers-into-vaes' T5VAE.run_batch (model_t5.py:78-114,
commit e2edc228) handed its encoder for a toy batch after torch.manual_seed(seed) (docs/CONVENTIONS.md,
"How the goldens were made"); the same seed in a generator must give the same tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seq2vae.data.noising import reference_denoise

GOLDEN = json.loads((Path(__file__).parent / "reference_denoise_golden.json").read_text())


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"p{c['deletion_rate']}-seed{c['seed']}")
def test_reference_denoise_equals_the_reference_run_batch(case):
    ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
    labels = ids.clone()
    out = reference_denoise(
        {"input_ids": ids, "attention_mask": mask, "labels": labels}, case["deletion_rate"], 0,
        torch.Generator().manual_seed(case["seed"]),
    )
    assert out["input_ids"].tolist() == case["noised_input_ids"]
    assert out["attention_mask"].tolist() == case["noised_attention_mask"]
    assert torch.equal(out["labels"], labels) and torch.equal(ids, torch.tensor(case["input_ids"]))  # inputs untouched


def test_the_quirks_show_on_the_toy_batch():
    case = GOLDEN["cases"][0]  # p = 0.4, lengths 3 / 8 / 14 / 20 / 24
    ids, mask = torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"])
    out = reference_denoise({"input_ids": ids, "attention_mask": mask}, 0.4, 0, torch.Generator().manual_seed(0))
    # The swap: the encoder reads 0/1 "ids" and the token ids serve as its attention mask.
    assert set(out["input_ids"].unique().tolist()) <= {0, 1}
    assert out["attention_mask"].max() > 1
    # floor(0.4 * 2) = 0 for the 3-token row: nothing dropped, the row is only swapped.
    assert out["input_ids"][0].tolist() == mask[0].tolist() and out["attention_mask"][0].tolist() == ids[0].tolist()
    kept = out["input_ids"].sum(-1)
    dropped = mask.sum(-1) - kept
    max_drop = ((mask.sum(-1) - 1) * 0.4).floor()
    assert bool((dropped < max_drop.clamp_min(1)).all())  # randint's upper bound is exclusive
    assert int(dropped.sum()) > 0
    # EOS (the last real token) always survives: each noised mask row still ends its tokens with id 1.
    for row in range(ids.shape[0]):
        tokens = out["attention_mask"][row][out["attention_mask"][row] != 0]
        assert int(tokens[-1]) == 1
