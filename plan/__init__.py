"""Capacity planning: parameters, per-rank memory, traffic and FLOPs of a training config on a layout."""

from .devices import DEVICE_PEAKS, lookup_device, peak_tflops
from .flops import forward_flops_per_sentence, training_flops_per_token
from .memory import ModelStateBytes, ZeroSetting, activation_bytes, model_state_bytes
from .model_shape import ModelShape, model_shape
from .planner import ClusterLayout, Plan, plan_run

__all__ = [
    "ClusterLayout",
    "DEVICE_PEAKS",
    "ModelShape",
    "ModelStateBytes",
    "Plan",
    "ZeroSetting",
    "activation_bytes",
    "forward_flops_per_sentence",
    "lookup_device",
    "model_shape",
    "model_state_bytes",
    "peak_tflops",
    "plan_run",
    "training_flops_per_token",
]
