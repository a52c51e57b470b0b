"""Run under torchrun by test_runs.py: checks the engine-level guarantees a training run cannot show.

    torchrun --nproc_per_node 2 engine_probe.py CONFIG.yaml OUT_DIR

Phase 1 (decoder frozen) then phase 2 of the config, step by step through the trainer's own
`train_step`, checking on real ZeRO engines that
- the frozen decoder is bit-identical after phase 1 (gathered on ALL ranks under ZeRO-3),
- the frozen group's Adam state did not advance while trained groups' did,
- a non-finite loss on ONE rank makes every rank skip the step, leaving every weight unchanged,
- a step DeepSpeed drops itself (every loss finite, non-finite gradients on ONE rank) is counted as
  skipped on every rank, leaving every weight unchanged,
- the decoder trains in phase 2.
Writes OUT_DIR/probe.json (rank 0) and OUT_DIR/reference.pt: the final model's outputs on a fixed
batch, which the export test compares with the exported model.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

import seq2vae.train.trainer as trainer_module
from seq2vae.distributed import gather_objects
from seq2vae.train.config import load_train_config
from seq2vae.train.trainer import Trainer


def gathered_copy(trainer: Trainer, names: list[str]) -> dict[str, list[torch.Tensor]]:
    """Full copies of the named groups' parameters (a collective under ZeRO-3)."""
    copies = {}
    for name in names:
        params = trainer.parts.groups[name]
        context = contextlib.nullcontext()
        if trainer.parts.zero_stage == 3:
            import deepspeed

            context = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        with context:
            copies[name] = [p.detach().clone().float().cpu() for p in params]
    return copies


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def adam_steps(trainer: Trainer) -> dict[str, list[float]]:
    """Adam step counts of this rank's fp32 partitions, per parameter group name."""
    base = trainer.parts.optimizer
    zero = trainer.engine.optimizer
    names = [group["name"] for group in base.param_groups]
    if trainer.parts.zero_stage == 3:
        pairs = [(names[zero.sub_group_to_group_id[i]], flat) for i, flat in enumerate(zero.fp32_partitioned_groups_flat)]
    else:
        pairs = [(group["name"], p) for group in base.param_groups for p in group["params"]]
    steps: dict[str, list[float]] = {name: [] for name in names}
    for name, tensor in pairs:
        state = base.state.get(tensor, {})
        steps[name].append(float(state["step"]) if "step" in state else 0.0)
    return steps


@contextlib.contextmanager
def loss_replaced(trainer: Trainer, rank: int, poison: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While active, the trainer's loss on `rank` only is `poison(loss)`."""
    original = trainer_module.vae_loss
    if trainer.world.rank == rank:
        def poisoned(*args, **kwargs):
            loss, parts = original(*args, **kwargs)
            return poison(loss), parts

        trainer_module.vae_loss = poisoned
    try:
        yield
    finally:
        trainer_module.vae_loss = original


def infinite_gradient(loss: torch.Tensor) -> torch.Tensor:
    """The same (finite) value whose gradient is not finite: sqrt'(0) = inf is multiplied into every
    parameter's gradient (inf, or NaN where the gradient was 0). What an fp16 loss-scale overflow
    does to DeepSpeed's gradient norm, without fp16 (seq2vae does not offer it)."""
    return loss + torch.sqrt(loss - loss.detach())


def run_steps(trainer: Trainer, phase_index: int, count: int) -> list:
    results = []
    phase = trainer.config.phases[phase_index]
    offset = sum(p.steps for p in trainer.config.phases[:phase_index])
    for _ in range(count):
        trainer.enter_phase(phase_index)
        result = trainer.train_step(phase, trainer.step - offset)
        trainer.step += 1
        trainer.record_skip(result)
        results.append(result)
    return results


def main(config_path: str, out_dir: str) -> None:
    out = Path(out_dir)
    config = load_train_config(config_path, ["resume=never"])
    trainer = Trainer(config)
    rank = trainer.world.rank
    groups = ["decoder", "encoder", "embeddings", "posterior", "latent"]
    report: dict = {}

    before = gathered_copy(trainer, groups)
    run_steps(trainer, 0, config.phases[0].steps)
    after_phase1 = gathered_copy(trainer, groups)
    steps = adam_steps(trainer)
    report["decoder_unchanged_phase1"] = same(before["decoder"], after_phase1["decoder"])
    report["encoder_changed_phase1"] = not same(before["encoder"], after_phase1["encoder"])
    report["adam_steps_phase1"] = steps

    # One step whose loss is NaN on rank 1 only: every rank must skip it.
    with loss_replaced(trainer, 1, lambda loss: loss * float("nan")):
        (skip_result,) = run_steps(trainer, 1, 1)
    after_skip = gathered_copy(trainer, groups)
    report["nan_step_skipped"] = skip_result.skipped
    report["nan_step_weights_unchanged"] = all(same(after_phase1[g], after_skip[g]) for g in groups)
    report["total_skips"] = trainer.skips.total

    # One step whose loss is finite everywhere but whose gradients are not on rank 1: the trainer
    # steps, DeepSpeed drops the step (was_step_applied() is False), and every rank counts it.
    with loss_replaced(trainer, 1, infinite_gradient):
        (dropped,) = run_steps(trainer, 1, 1)
    after_drop = gathered_copy(trainer, groups)
    report["dropped_step_per_rank"] = gather_objects(
        {"skipped": dropped.skipped, "dropped_by_deepspeed": dropped.dropped_by_deepspeed,
         "applied": trainer.engine.was_step_applied(), "total_skips": trainer.skips.total}
    )
    report["dropped_step_weights_unchanged"] = all(same(after_skip[g], after_drop[g]) for g in groups)

    run_steps(trainer, 1, 2)
    after_phase2 = gathered_copy(trainer, groups)
    report["decoder_changed_phase2"] = not same(after_drop["decoder"], after_phase2["decoder"])
    report["adam_steps_phase2"] = adam_steps(trainer)
    report["step"] = trainer.step
    trainer.save()

    batch = {k: v.to(trainer.world.device) for k, v in trainer.validation_batches[0].items()}
    vae = trainer.engine.module
    vae.eval()
    with torch.no_grad():
        output = vae(batch["input_ids"], batch["attention_mask"], batch["labels"], sample=False)
    trainer.monitor.close()
    if rank == 0:
        torch.save({"batch": batch, "mu": output.mu.float(), "recon_nll": output.recon_nll.float()}, out / "reference.pt")
        (out / "probe.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
