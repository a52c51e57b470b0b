"""Bytes each rank sends per optimizer step, for ring collectives over W ranks.

A ring all-gather or reduce-scatter of a tensor of N bytes moves N (W-1)/W bytes per rank; an
all-reduce is both, 2 N (W-1)/W. With p parameter bytes and c = p communication bytes (DeepSpeed's
default `communication_data_type` is the parameter dtype), P parameters and G accumulation steps:

    stage 1 (bf16: BF16_Optimizer): all-reduce of the gradients once per step, 2 c P; all-gather of the
        updated parameters, p P
    stage 2: reduce-scatter of the gradients every micro step (the backward hooks reduce each
        bucket as it fills), G c P; all-gather of the updated parameters, p P
    stage 3: every micro step all-gathers the parameters for forward and again for backward, 2 G p P,
        and reduce-scatters the gradients, G c P. With hpZ the backward all-gather reads the
        secondary partition inside the node, so it leaves the inter-node traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory import ZeroSetting


@dataclass(frozen=True)
class Traffic:
    bytes_per_rank_per_step: int
    inter_node_bytes_per_rank_per_step: int  # the part crossing node boundaries (0 on one node)


def step_traffic(parameters: int, zero: ZeroSetting, world_size: int, nodes: int, accumulation: int, precision: str) -> Traffic:
    p = 2 if precision == "bf16" else 4
    ring = (world_size - 1) / world_size
    if zero.stage == 1:
        volumes = [2 * p * parameters, p * parameters]
        intra_only = 0.0
    elif zero.stage == 2:
        volumes = [accumulation * p * parameters, p * parameters]
        intra_only = 0.0
    else:
        backward_gather = accumulation * p * parameters
        volumes = [accumulation * p * parameters, backward_gather, accumulation * p * parameters]
        intra_only = backward_gather if zero.hpz_partition_size > 1 else 0.0
    total = int(sum(volumes) * ring)
    inter = 0 if nodes <= 1 else int((sum(volumes) - intra_only) * ring)
    return Traffic(total, inter)
