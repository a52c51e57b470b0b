"""Run under torchrun by test_initial_weights.py: a real training run that also records its start.

    torchrun --nproc_per_node N initial_weights_probe.py CONFIG.yaml OUT_DIR [--no-train]

Builds the trainer (and so its DeepSpeed engine) from CONFIG.yaml, gathers every parameter whole
(under ZeRO-3 with GatheredParameters, a collective on all ranks) and writes them from rank 0 to
OUT_DIR/initial.safetensors; then trains to the end with `Trainer.fit` unless --no-train.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from seq2vae.train.config import load_train_config
from seq2vae.train.trainer import Trainer


def gathered_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    state = {}
    for name, parameter in trainer.parts.vae.named_parameters():
        context = contextlib.nullcontext()
        if trainer.parts.zero_stage == 3:
            import deepspeed

            context = deepspeed.zero.GatheredParameters([parameter], modifier_rank=None)
        with context:
            state[name] = parameter.detach().clone().float().cpu().contiguous()
    return state


def main(config_path: str, out_dir: str, train: bool) -> None:
    trainer = Trainer(load_train_config(config_path))
    state = gathered_state(trainer)
    if trainer.world.is_main:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        save_file(state, str(Path(out_dir) / "initial.safetensors"))
    if train:
        trainer.fit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--no-train" not in sys.argv[3:])
