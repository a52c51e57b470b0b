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
    lines += [f"note: {note}" for note in plan.notes]
    lines += [f"assumption: {assumption}" for assumption in plan.assumptions]
    return "\n".join(lines)
