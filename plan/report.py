"""The plan as text for a terminal (`seq2vae plan`); `--json` prints `Plan.to_dict()` instead."""

from __future__ import annotations

from .memory import GIB
from .planner import Plan


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def render_plan(plan: Plan) -> str:
    data = plan.to_dict()
    layout, per_rank, rec = plan.layout, data["per_rank"], data["recommendation"]
    lines = [
        f"{plan.backbone}: {plan.parameters:,} parameters ({plan.parameters / 1e9:.2f}B), {plan.precision}",
        f"layout: {layout.nodes} node(s) x {layout.gpus_per_node} GPU(s) = {layout.world_size} ranks, "
        f"{layout.gpu_memory_gib:g} GiB per GPU, {layout.host_memory_gib:g} GiB host per node",
        f"batch: micro {data['micro_batch_size']} x accumulation {data['gradient_accumulation_steps']} x "
        f"{layout.world_size} ranks = {data['global_batch_size']} sentences of {plan.source_length} tokens",
        f"configured: {data['zero']}, gradient checkpointing {'on' if data['gradient_checkpointing'] else 'off'}",
        "per rank (GPU):",
        f"  parameters {_gib(per_rank['parameter_bytes'])}, gradients {_gib(per_rank['gradient_bytes'])}, "
        f"optimizer states {_gib(per_rank['optimizer_state_bytes'])}, buffers {_gib(per_rank['buffer_bytes'])}",
        f"  model states {_gib(per_rank['model_states_bytes'])} + activations {_gib(per_rank['activation_bytes'])} "
        f"(checkpointing on {_gib(per_rank['activation_bytes_with_checkpointing'])}, off "
        f"{_gib(per_rank['activation_bytes_without_checkpointing'])}) = {_gib(per_rank['total_bytes'])} "
        f"of {_gib(data['usable_gpu_bytes'])} usable",
        f"host per node: {_gib(data['host_per_node_bytes'])} of {layout.host_memory_gib:g} GiB"
        + (f" (offloaded per rank {_gib(per_rank['offloaded_host_bytes'])})" if per_rank["offloaded_host_bytes"] else ""),
        f"traffic per optimizer step per rank: {_gib(data['communication']['bytes_per_rank_per_step'])}"
        f" ({_gib(data['communication']['inter_node_bytes_per_rank_per_step'])} across nodes)",
        f"model FLOPs per token (training, source + target tokens): {plan.flops_per_token:.4g}",
        f"fits: {'yes' if plan.fits else 'NO'}",
    ]
    lines += [f"  problem: {problem}" for problem in plan.problems]
    change = ", ".join(rec["overrides"]) or "nothing"
    lines.append(
        f"recommendation: {rec['zero']}, micro batch {rec['micro_batch_size']}, gradient checkpointing "
        f"{'on' if rec['gradient_checkpointing'] else 'off'}: {_gib(rec['per_rank_total_bytes'])} per rank, "
        f"host {_gib(rec['host_per_node_bytes'])} per node, "
        f"{_gib(rec['communication']['bytes_per_rank_per_step'])} traffic per rank per step"
        + ("" if rec["fits"] else " (does NOT fit)")
    )
    lines.append(f"  change: {change}")
    lines += _evaluation_lines(plan)
    lines += [f"note: {note}" for note in plan.notes]
    lines += [f"assumption: {assumption}" for assumption in plan.assumptions]
    return "\n".join(lines)


# How each weight dtype of EVAL_DTYPE_BYTES reaches `seq2vae eval`.
_EVAL_DTYPE_SOURCES = {"fp32": "a run directory's export", "bf16": "seq2vae export --dtype bf16"}


def _evaluation_lines(plan: Plan) -> list[str]:
    """`seq2vae eval --placement auto`'s choice for the trained model, per weight dtype."""
    if plan.evaluation is None:
        return []
    batch = plan.evaluation.batch
    lines = [
        f"evaluation (seq2vae eval defaults: {batch.sequences} sequences x {batch.length} tokens per decoder call):"
    ]
    for name, estimate in plan.evaluation.by_dtype.items():
        weights = f"  {name} weights ({_EVAL_DTYPE_SOURCES.get(name, name)})"
        if estimate.placement is None:
            lines.append(f"{weights}: fits NO placement: {estimate.problem}")
            continue
        chosen = estimate.replica if estimate.placement == "replica" else estimate.zero3
        other = "" if estimate.placement == "replica" else f" (a replica would need {_gib(estimate.replica.total)})"
        lines.append(
            f"{weights}: {estimate.placement}, {_gib(chosen.total)} per rank of {_gib(estimate.usable_bytes)} usable{other}"
        )
    return lines
