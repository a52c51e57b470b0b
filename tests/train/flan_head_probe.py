"""Run under torchrun by test_flan_head_run.py: one real training run of the tiny Flan-like T5.

    torchrun --nproc_per_node 2 flan_head_probe.py CONFIG.yaml OUT_DIR

Through the trainer's own `fit`, records on every rank
- each backbone dropout module's mode and probability whenever it runs, split into training steps and
  validation (forward hooks; `model.dropout` must be what the modules use),
- whether the LM head stays a tensor of its own (never the embedding) after the engine is built,
- the trained head and embedding at the end (gathered on ALL ranks under ZeRO-3).
Writes OUT_DIR/probe.json and OUT_DIR/head.pt (rank 0).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

from seq2vae.train.config import load_train_config
from seq2vae.train.trainer import Trainer


def main(config_path: str, out_dir: str) -> None:
    out = Path(out_dir)
    trainer = Trainer(load_train_config(config_path, ["resume=never"]))
    backbone = trainer.parts.vae.backbone
    seen = {"train": set(), "validation": set()}
    where = {"now": "train"}

    def record(module, inputs, output):
        seen[where["now"]].add((module.training, round(module.p, 6)))

    dropouts = [m for m in backbone.modules() if isinstance(m, torch.nn.Dropout)]
    for module in dropouts:
        module.register_forward_hook(record)
    validate = trainer.validate

    def validate_and_record():
        where["now"] = "validation"
        try:
            return validate()
        finally:
            where["now"] = "train"

    trainer.validate = validate_and_record
    untied_at_start = backbone.lm_head.weight is not backbone.shared.weight
    summary = trainer.fit()
    head, embedding = backbone.lm_head.weight, backbone.shared.weight
    context = contextlib.nullcontext()
    if trainer.parts.zero_stage == 3:
        import deepspeed

        context = deepspeed.zero.GatheredParameters([head, embedding], modifier_rank=None)
    with context:
        final = {"lm_head": head.detach().float().cpu().clone(), "shared": embedding.detach().float().cpu().clone()}
    if trainer.world.is_main:
        torch.save(final, out / "head.pt")
        report = {
            "dropout_modules": len(dropouts),
            "train": sorted(seen["train"]),
            "validation": sorted(seen["validation"]),
            "untied_at_start": untied_at_start,
            "untied_at_end": head is not embedding,
            "status": summary["status"],
        }
        (out / "probe.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
