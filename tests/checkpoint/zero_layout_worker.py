"""A torchrun worker for test_consolidate: real DeepSpeed checkpoints of a toy model showing the parts of
the ZeRO layouts seq2vae's own runs do not (every VAE parameter is in the optimizer, and it has no
buffers): parameters frozen from the start (ZeRO-2/3 `frozen_param_fragments`), persistent float and
integer buffers (and a non-persistent one, which is not saved), odd sizes (ZeRO-3 share padding,
ZeRO-1/2 alignment), two param groups and a tied weight. One step, then one checkpoint per stage:

    torchrun --nproc_per_node 2 zero_layout_worker.py OUT   # OUT/zero{1,2,3}/step_1

and two layouts DeepSpeed's zero_to_fp32 cannot read, with rank 0's reference of what they hold:
OUT/zero1-bf16/step_1 (stage 1 in bf16 with fp32 accumulation: DeepSpeed's BF16_Optimizer; reference:
every trained parameter's fp32 master, gathered) and OUT/stage0/step_1 (no ZeRO; reference: the
module's state dict).
"""

import sys
from pathlib import Path

import deepspeed
import torch
from torch import nn

from seq2vae.distributed import init_world, shutdown_world


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(37, 11)
        self.hidden = nn.Linear(11, 13)
        self.frozen = nn.Linear(13, 7)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(11, 37, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 5))
        self.register_buffer("counts", torch.arange(3))
        self.register_buffer("scratch", torch.ones(2), persistent=False)

    def forward(self, ids):
        hidden = self.embed(ids)
        return self.head(hidden).square().mean() + self.frozen(torch.tanh(self.hidden(hidden))).mean() * self.scale.sum()


out = Path(sys.argv[1])
world = init_world(timeout_s=120)
for stage in (1, 2, 3):
    torch.manual_seed(stage)
    model = Toy()
    groups = [
        {"params": [model.embed.weight, model.hidden.weight]},
        {"params": [model.hidden.bias], "weight_decay": 0.0},
    ]
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(groups, lr=0.1),
        config={
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        },
    )
    loss = engine(torch.tensor([[world.rank, 5, 9, 36]]))
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(str(out / f"zero{stage}"), tag="step_1")
    del engine

for name, settings in {
    "zero1-bf16": {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}, "data_types": {"grad_accum_dtype": "fp32"}},
    "stage0": {"zero_optimization": {"stage": 0}},
}.items():
    torch.manual_seed(4)
    model = Toy()
    groups = [
        {"params": [model.embed.weight, model.hidden.weight]},
        {"params": [model.hidden.bias], "weight_decay": 0.0},
    ]
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(groups, lr=0.1),
        config={"train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
                **settings},
    )
    expected = "BF16_Optimizer" if name == "zero1-bf16" else "AdamW"
    assert type(engine.optimizer).__name__ == expected, (name, type(engine.optimizer))
    loss = engine(torch.tensor([[world.rank, 5, 9, 36]]))
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(str(out / name), tag="step_1")
    if name == "zero1-bf16":  # a collective: every rank takes part
        reference = {
            param_name: deepspeed.utils.safe_get_full_fp32_param(param).detach().clone()
            for param_name, param in engine.module.named_parameters() if param.requires_grad
        }
    else:
        reference = {key: value.detach().clone() for key, value in engine.module.state_dict().items()}
    if world.rank == 0:
        torch.save(reference, out / name / "reference.pt")
    del engine
shutdown_world()
