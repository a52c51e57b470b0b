"""Throughput, MFU and accelerator memory over a logging window, the same on every rank.

Between two logging steps each rank adds up the source and target tokens it processed and the time
its optimizer steps took; at the logging step one all-reduce sums the tokens and takes the slowest
rank's time, so tokens/s is the job's, not rank 0's. MFU = model FLOPs per token (the planner's
count at the shards' max length, `seq2vae.model.flops`) x tokens/s / (ranks x peak FLOP/s of one
device). Memory is the maximum over ranks of what the accelerator's caching allocator holds
(allocated and reserved, now and the window's peak); peaks are reset after each logging window, so
a spike shows at the step it happened. On CPU DeepSpeed's accelerator reports the process RSS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.shards import load_meta
from ..hardware import peak_tflops
from ..model.flops import training_flops_per_token
from ..model.shape import model_dims

GIB = 2**30


@dataclass
class ThroughputWindow:
    flops_per_token: float  # training model FLOPs per source + target token
    peak_flops_per_rank: float | None  # FLOP/s of one device; None = unknown (no MFU is logged)
    device: torch.device
    source_tokens: int = 0
    target_tokens: int = 0
    step_time_s: float = 0.0

    def add(self, source_tokens: int, target_tokens: int, step_time_s: float) -> None:
        self.source_tokens += source_tokens
        self.target_tokens += target_tokens
        self.step_time_s += step_time_s

    def report(self) -> dict[str, float]:
        """A collective: every rank calls it at the same steps. Returns perf/ and memory/ scalars."""
        import torch.distributed as dist
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        sums = torch.tensor([self.source_tokens, self.target_tokens], dtype=torch.float64, device=self.device)
        maxima = torch.tensor(
            [
                self.step_time_s,
                accelerator.memory_allocated(),
                accelerator.memory_reserved(),
                accelerator.max_memory_allocated(),
                accelerator.max_memory_reserved(),
            ],
            dtype=torch.float64,
            device=self.device,
        )
        if dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        source, target = sums.tolist()
        seconds, allocated, reserved, peak_allocated, peak_reserved = maxima.tolist()
        tokens_per_s = (source + target) / seconds if seconds > 0 else 0.0
        achieved = self.flops_per_token * tokens_per_s  # FLOP/s of the whole job
        ranks = dist.get_world_size() if dist.is_initialized() else 1
        values = {
            "perf/tokens_per_s": tokens_per_s,
            "perf/source_tokens_per_s": source / seconds if seconds > 0 else 0.0,
            "perf/target_tokens_per_s": target / seconds if seconds > 0 else 0.0,
            "perf/model_tflops_per_s_per_rank": achieved / ranks / 1e12,
            "memory/allocated_gib": allocated / GIB,
            "memory/reserved_gib": reserved / GIB,
            "memory/peak_allocated_gib": peak_allocated / GIB,
            "memory/peak_reserved_gib": peak_reserved / GIB,
        }
        if self.peak_flops_per_rank:
            values["perf/mfu"] = achieved / (ranks * self.peak_flops_per_rank)
        accelerator.reset_peak_memory_stats()
        self.source_tokens = self.target_tokens = 0
        self.step_time_s = 0.0
        return values


def make_throughput_window(config, vae, device: torch.device) -> ThroughputWindow:
    """The window for a run: FLOPs per token of `vae` at the shards' max length (from its dims: no
    second model is built); the peak from `logging.peak_tflops`, else the device table (CUDA), else unknown."""
    max_length = int(load_meta(config.data.train)["max_length"])
    flops = training_flops_per_token(model_dims(vae.backbone.config, config.model), max_length)
    peak = config.logging.peak_tflops
    if peak is None and device.type == "cuda":
        peak = peak_tflops(torch.cuda.get_device_name(device), config.precision)
    return ThroughputWindow(flops, peak * 1e12 if peak else None, device)
